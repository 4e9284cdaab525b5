"""Transformer building blocks: norms, multi-head attention with RoPE and an explicit KV cache,
the MLP, and the pre-norm transformer layer shared by flow blocks and the denoiser.

Parameters carry logical axis names (`starflow_jax.axes`) and never device axes;
`starflow_jax.sharding` maps them onto a mesh. The KV cache is explicit state: a dict
{"k": [B, S_cache, H, Dh], "v": [B, S_cache, H, Dh]} passed in and returned, keys stored already
rotated by RoPE, so decoding functions stay pure and jit/while_loop friendly.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from starflow_jax import attention, axes, rope

Array = jnp.ndarray
KVCache = dict[str, Array]

LAYER_NORM_EPS = 1e-5  # PyTorch default, used by the official LayerNorm
RMS_NORM_EPS = 1e-6
NEG_INF = attention.NEG_INF
_ATTENTION_TEMPERATURE = contextvars.ContextVar("attention_temperature", default=1.0)


@contextlib.contextmanager
def attention_temperature(temperature: float):
  """Every attention traced inside divides its logits by `temperature` (the official sampler's
  --attn_temp: softmax(q k^T / (sqrt(d) * temperature))). A trace-time setting: enter it inside
  the function that is jitted, so each compiled program has its own."""
  token = _ATTENTION_TEMPERATURE.set(float(temperature))
  try:
    yield
  finally:
    _ATTENTION_TEMPERATURE.reset(token)


def dense_init(scale: float = 0.02):
  return nn.initializers.normal(stddev=scale)


def logical(init, names):
  """`init` with logical axis `names` (constants of `starflow_jax.axes`) for the sharding rules."""
  return nn.with_logical_partitioning(init, names)


class RMSNorm(nn.Module):
  """x * rsqrt(mean(x^2) + eps) * (1 + scale), in float32, with a zero-initialised `scale`.

  The official `RMSNorm(add_unit_offset=True)`: a fresh norm is the plain RMS normalisation.
  """

  eps: float = RMS_NORM_EPS

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = self.param("scale", logical(nn.initializers.zeros, (axes.NORM,)), (x.shape[-1],), jnp.float32)
    xf = x.astype(jnp.float32)
    out = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
    return (out * (1.0 + scale)).astype(x.dtype)


def make_norm(norm_type: str, name: str, dtype=jnp.float32) -> nn.Module:
  """LayerNorm (weight and bias, eps 1e-5 as PyTorch, two-pass variance) or unit-offset RMSNorm."""
  if norm_type == "layer_norm":
    return nn.LayerNorm(epsilon=LAYER_NORM_EPS,
                        use_fast_variance=False,
                        dtype=dtype,
                        param_dtype=jnp.float32,
                        name=name,
                        scale_init=logical(nn.initializers.ones, (axes.NORM,)),
                        bias_init=logical(nn.initializers.zeros, (axes.NORM,)))
  return RMSNorm(name=name)


def causal_mask(num_queries: int, num_keys: int) -> Array:
  """[Q, K] bool, query i sees keys j <= i + (K - Q) (the official tril with a prefix offset)."""
  return attention.CausalMask().dense(num_queries, num_keys)


def attend(q: Array, k: Array, v: Array, mask: Array | None) -> Array:
  """Softmax attention, q [B, Q, H, Dh], k/v [B, K, H, Dh], mask [Q, K] or [B, Q, K] (True=keep).

  Logits and softmax in float32, scale head_dim^-0.5 (the official scale).
  """
  scale = q.shape[-1]**-0.5
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
  if mask is not None:
    mask = mask[None, None] if mask.ndim == 2 else mask[:, None]
    logits = jnp.where(mask, logits, NEG_INF)
  weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


class Attention(nn.Module):
  """Multi-head self-attention with RoPE; optionally reads and writes an explicit KV cache.

  qkv packs q, k, v along its output like the official `qkv` Linear ([W, 3, H, Dh] kernel).
  """

  num_heads: int
  head_dim: int
  use_bias: bool = True
  dtype: Any = jnp.float32
  block_size: int | None = None  # block-wise (flash) attention for longer sequences; None: dense

  @nn.compact
  def __call__(self,
               x: Array,
               cos: Array,
               sin: Array,
               mask,
               cache: KVCache | None = None,
               cache_index: Array | int = 0):
    """x [B, M, W]; cos/sin [M, Dh] for these M positions.

    Without a cache: attention among the M tokens under `mask` (a [M, M] / [B, M, M] bool array,
    an `attention.PositionMask`, or None = full); with `block_size`, sequences longer than it
    under a position mask use `attention.blockwise_attention` (same result, tiled memory).
    With a cache: K/V of the M tokens are written at `cache_index` and the queries attend to
    cache entries j <= cache_index + i (earlier entries hold the prefix). Returns (y, cache).
    """
    width = x.shape[-1]
    qkv = nn.DenseGeneral(features=(3, self.num_heads, self.head_dim),
                          use_bias=self.use_bias,
                          dtype=self.dtype,
                          param_dtype=jnp.float32,
                          name="qkv",
                          kernel_init=logical(dense_init(), (axes.EMBED, axes.QKV, axes.HEADS, axes.KV)),
                          bias_init=logical(nn.initializers.zeros,
                                            (axes.QKV, axes.HEADS, axes.KV)))(x)  # [B, M, 3, H, Dh]
    qkv = axes.constrain(qkv, (axes.ACT_BATCH, axes.ACT_LENGTH, None, axes.ACT_HEADS, axes.ACT_KV))
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    q = rope.apply_rope(q, cos, sin)
    k = rope.apply_rope(k, cos, sin)
    temperature = _ATTENTION_TEMPERATURE.get()
    if temperature != 1.0:  # logits / temperature, as q / temperature (RoPE is linear)
      q = q * jnp.asarray(1.0 / temperature, q.dtype)
    if cache is not None:
      cache_index = jnp.asarray(cache_index, jnp.int32)
      zero = jnp.zeros((), jnp.int32)
      start = (zero, cache_index, zero, zero)
      cache = {
          "k": jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), start),
          "v": jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), start)
      }
      k, v = cache["k"].astype(q.dtype), cache["v"].astype(q.dtype)
      query_pos = cache_index + jnp.arange(q.shape[1])
      mask = jnp.arange(k.shape[1])[None, :] <= query_pos[:, None]
    if isinstance(mask, attention.PositionMask) or (mask is None and cache is None):
      if self.block_size and q.shape[1] > self.block_size:
        y = attention.blockwise_attention(q, k, v, mask, self.block_size, self.block_size)
      else:
        y = attend(q, k, v, None if mask is None else mask.dense(q.shape[1], k.shape[1]))
    else:
      y = attend(q, k, v, mask)  # [B, M, H, Dh]
    y = nn.DenseGeneral(features=width,
                        axis=(-2, -1),
                        use_bias=self.use_bias,
                        dtype=self.dtype,
                        param_dtype=jnp.float32,
                        name="out",
                        kernel_init=logical(dense_init(), (axes.HEADS, axes.KV, axes.EMBED)),
                        bias_init=logical(nn.initializers.zeros, (axes.EMBED,)))(y)
    return y, cache


def gelu_exact(x: Array) -> Array:
  """x * Phi(x) as PyTorch's exact GELU computes it: 0.5 x (1 + erf(x / sqrt 2)).

  Same function as jax.nn.gelu(approximate=False) (within 1e-6), which goes through erfc and
  evaluates two polynomial branches plus an exp per element: this form is 2x (alone) to 6x (in a
  small decoder step, where the MLP's activation was a quarter of the time) faster on CPU.
  """
  return 0.5 * x * (1.0 + jax.lax.erf(x * jnp.asarray(0.7071067811865476, x.dtype)))


class MLP(nn.Module):
  """Linear -> exact GELU -> Linear (the official `mlp.main`)."""

  hidden: int
  use_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    width = x.shape[-1]
    h = nn.Dense(self.hidden,
                 use_bias=self.use_bias,
                 dtype=self.dtype,
                 param_dtype=jnp.float32,
                 kernel_init=logical(dense_init(), (axes.EMBED, axes.MLP)),
                 bias_init=logical(nn.initializers.zeros, (axes.MLP,)),
                 name="fc_in")(x)
    h = gelu_exact(axes.constrain(h, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_MLP)))
    return nn.Dense(width,
                    use_bias=self.use_bias,
                    dtype=self.dtype,
                    param_dtype=jnp.float32,
                    kernel_init=logical(dense_init(), (axes.MLP, axes.EMBED)),
                    bias_init=logical(nn.initializers.zeros, (axes.EMBED,)),
                    name="fc_out")(h)


ACTIVATION = (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_EMBED)  # a layer's input and output [B, M, W]


class TransformerLayer(nn.Module):
  """Pre-norm layer: x + Attn(Norm(x)); x + MLP(Norm(x)). Returns (x, cache)."""

  num_heads: int
  head_dim: int
  mlp_hidden: int
  norm_type: str = "layer_norm"
  use_bias: bool = True
  dtype: Any = jnp.float32
  attention_block_size: int | None = None

  @nn.compact
  def __call__(self,
               x: Array,
               cos: Array,
               sin: Array,
               mask,
               cache: KVCache | None = None,
               cache_index: Array | int = 0):
    x = axes.constrain(x, ACTIVATION)
    h = make_norm(self.norm_type, "attention_norm", self.dtype)(x)
    h, cache = Attention(self.num_heads,
                         self.head_dim,
                         self.use_bias,
                         self.dtype,
                         self.attention_block_size,
                         name="attention")(h, cos, sin, mask, cache, cache_index)
    x = x + h
    h = make_norm(self.norm_type, "mlp_norm", self.dtype)(x)
    x = x + MLP(self.mlp_hidden, self.use_bias, self.dtype, name="mlp")(h)
    return axes.constrain(x, ACTIVATION), cache


def layer_class(remat: bool):
  """TransformerLayer, rematerialised in the backward pass when `remat`. Its mask argument is
  then static: an `attention.PositionMask` or None (position masks, not arrays, are what the
  flow blocks and the denoiser pass)."""
  if not remat:
    return TransformerLayer
  return nn.remat(TransformerLayer, static_argnums=(4,))  # self, x, cos, sin, mask


def init_kv_cache(batch: int,
                  length: int,
                  num_heads: int,
                  head_dim: int,
                  num_layers: int,
                  dtype=jnp.float32) -> list[KVCache]:
  """Zeroed per-layer caches, each {"k", "v"}: [B, length, H, Dh]."""
  shape = (batch, length, num_heads, head_dim)
  return [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in range(num_layers)]
