"""The autoregressive affine flow block (TARFlow "MetaBlock"), as a Flax linen module.

A block sees tokens u [B, S, D] in its own token order. A causal transformer reads the
sequence shifted right by one, [sos, u_1, ..., u_{S-1}] (behind an optional condition prefix),
and predicts per token a shift b_i and a positive scale s_i from u_<i; then
  forward (data -> noise):  z_i = (u_i - b_i) / s_i,   log|det dz/du| = sum -log s_i,
  inverse (noise -> data):  u_i = z_i * s_i + b_i   (sequential in i; see decoding / jacobi).
The affine arithmetic and log-dets are float32 whatever the transformer's compute dtype.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from starflow_jax import attention, axes, layers, rope, tokens
from starflow_jax.rope import TokenGrid

Array = jnp.ndarray
INV_SOFTPLUS_1 = 0.541324854612918  # softplus^-1(1): a fresh head gives scale 1


def affine_scale(a: Array, use_softplus: bool = True) -> Array:
  """Positive scale s from the head's first half a (float32): softplus(a + softplus^-1(1)) or exp(a)."""
  a = a.astype(jnp.float32)
  if use_softplus:
    return jax.nn.softplus(a + INV_SOFTPLUS_1)
  return jnp.exp(a)


def affine_forward(u: Array, shift: Array, scale: Array) -> tuple[Array, Array]:
  """z = (u - shift) / scale and the per-element log-det -log(scale), all float32."""
  z = (u.astype(jnp.float32) - shift) / scale
  return z, -jnp.log(scale)


def affine_inverse(z: Array, shift: Array, scale: Array) -> Array:
  """u = z * scale + shift (float32)."""
  return z.astype(jnp.float32) * scale + shift


def soft_clip(x: Array, bound: float) -> Array:
  """bound * tanh(x / bound); the identity when bound == 0."""
  if bound <= 0:
    return x
  return bound * jnp.tanh(x / bound)


class FlowBlock(nn.Module):
  """One affine autoregressive flow block: a causal transformer over its token order.

  Attributes mirror the official MetaBlock. `order` is the block's token permutation;
  `conditioning` is 'text' (prefix from txt_dim embeddings through proj_txt), 'class'
  (1-token prefix from a label embedding, label num_classes = null) or None.
  A block with num_layers == 0 is the identity (official IdentityBlock) and has no parameters.
  """

  token_dim: int
  width: int
  num_layers: int
  head_dim: int
  order: str
  pt_seq_len: int
  rope_layout: str
  conditioning: str | None = None
  txt_dim: int = 0
  num_classes: int = 0
  soft_clip: float = 0.0
  use_softplus: bool = True
  use_final_norm: bool = True
  norm_type: str = "layer_norm"
  use_bias: bool = True
  expansion: float = 4.0
  dtype: Any = jnp.float32
  remat: bool = False
  attention_block_size: int | None = None  # flash attention past this many tokens (None: dense)
  num_actions: int = 0  # per-frame actions (ids 0..num_actions-1; num_actions = null); 0: none

  def setup(self):
    if self.num_layers == 0:
      return
    d, w = self.token_dim, self.width
    dense = dict(dtype=self.dtype, param_dtype=jnp.float32)
    self.proj_in = nn.Dense(w,
                            kernel_init=layers.logical(layers.dense_init(), (axes.PATCH, axes.EMBED)),
                            bias_init=layers.logical(nn.initializers.zeros, (axes.EMBED,)),
                            **dense)
    self.sos = self.param("sos", layers.logical(nn.initializers.normal(1.0), (axes.PATCH,)), (d,), jnp.float32)
    if self.conditioning == "text":
      self.proj_txt = nn.Dense(w,
                               kernel_init=layers.logical(layers.dense_init(), (axes.TEXT, axes.EMBED)),
                               bias_init=layers.logical(nn.initializers.zeros, (axes.EMBED,)),
                               **dense)
    elif self.conditioning == "class":
      self.class_embed = nn.Embed(self.num_classes + 1,
                                  w,
                                  dtype=self.dtype,
                                  param_dtype=jnp.float32,
                                  embedding_init=layers.logical(layers.dense_init(), (axes.CLASSES, axes.EMBED)))
    if self.num_actions:
      self.action_embed = nn.Embed(self.num_actions + 1,
                                   w,
                                   dtype=self.dtype,
                                   param_dtype=jnp.float32,
                                   embedding_init=layers.logical(nn.initializers.normal(0.02),
                                                                 (axes.CLASSES, axes.EMBED)))
    layer_cls = layers.layer_class(self.remat)
    self.layers = [
        layer_cls(num_heads=w // self.head_dim,
                  head_dim=self.head_dim,
                  mlp_hidden=int(w * self.expansion),
                  norm_type=self.norm_type,
                  use_bias=self.use_bias,
                  dtype=self.dtype,
                  attention_block_size=self.attention_block_size) for _ in range(self.num_layers)
    ]
    if self.use_final_norm:
      self.final_norm = layers.RMSNorm()
    # Zero kernel: a fresh block is the identity map (scale 1, shift 0).
    self.proj_out = nn.Dense(2 * d,
                             kernel_init=layers.logical(nn.initializers.zeros, (axes.EMBED, axes.PATCH)),
                             bias_init=layers.logical(nn.initializers.zeros, (axes.PATCH,)),
                             **dense)

  # ------------------------------------------------------------------ pieces
  @property
  def num_heads(self) -> int:
    return self.width // self.head_dim

  def cond_len(self, cond: Array | None) -> int:
    if self.conditioning is None or cond is None:
      return 0
    return 1 if self.conditioning == "class" else cond.shape[1]

  def condition_prefix(self, cond: Array) -> Array:
    """Text embeddings [B, L, txt_dim] or labels [B] -> prefix [B, L, W]."""
    if self.conditioning == "text":
      return self.proj_txt(cond.astype(self.dtype))
    return self.class_embed(cond.astype(jnp.int32))[:, None]

  def rope_tables(self, grid: TokenGrid, cond_len: int) -> tuple[Array, Array]:
    cos, sin = rope.rope_table(grid, cond_len, self.pt_seq_len, self.head_dim, self.rope_layout)
    return jnp.asarray(cos), jnp.asarray(sin)

  def embed_inputs(self, inputs: Array, actions: Array | None) -> Array:
    """Shifted inputs [B, M, D] -> the transformer's input [B, M, W]: proj_in, plus the
    embedding of the action of the frame each position predicts (actions [B, M] ids, or None:
    the null action) in an action-conditioned block."""
    h = self.proj_in(inputs.astype(self.dtype))
    if not self.num_actions:
      return h
    if actions is None:
      actions = jnp.full(inputs.shape[:2], self.num_actions, jnp.int32)
    return h + self.action_embed(actions.astype(jnp.int32))

  def start_tokens(self, batch: int) -> Array:
    """The learned start token, [B, 1, D] float32."""
    return jnp.broadcast_to(self.sos, (batch, 1, self.token_dim))

  def head(self, h: Array) -> tuple[Array, Array]:
    """Transformer output [B, M, W] -> (scale, shift) [B, M, D] float32."""
    if self.use_final_norm:
      h = self.final_norm(h)
    out = soft_clip(self.proj_out(h).astype(jnp.float32), self.soft_clip)
    a, b = jnp.split(out, 2, axis=-1)
    return affine_scale(a, self.use_softplus), b

  # ------------------------------------------------------------------ forward (training)
  def __call__(self,
               x: Array,
               grid: TokenGrid,
               cond: Array | None = None,
               actions: Array | None = None) -> tuple[Array, Array]:
    """forward_and_log_det: raster tokens x [B, S, D] -> (z [B, S, D] raster, logdet).

    logdet [B, S, D] is -log(scale) per element in this block's token order (as the official
    code returns it). All tokens are transformed at once (teacher forcing). actions: per-frame
    ids [B, T] of an action-conditioned block (`frame_actions`); they enter each frame's
    positions, so an action changes nothing before its frame.
    """
    if self.num_layers == 0:
      return x, jnp.zeros(x.shape, jnp.float32)
    b, s, _ = x.shape
    u = tokens.permute(x, self.order, grid.tokens_per_frame)  # [B, S, D] block order
    shifted = jnp.concatenate([self.start_tokens(b), u[:, :-1].astype(jnp.float32)], axis=1)
    h = self.embed_inputs(shifted, None if actions is None else frame_actions(actions, grid))  # [B, S, W]
    cond_len = self.cond_len(cond)
    if cond_len:
      h = jnp.concatenate([self.condition_prefix(cond), h], axis=1)  # [B, L+S, W]
    cos, sin = self.rope_tables(grid, cond_len)
    mask = attention.CausalMask()  # over [prefix; tokens]
    for layer in self.layers:
      h, _ = layer(h, cos, sin, mask)
    scale, shift = self.head(h[:, cond_len:])
    z, logdet = affine_forward(u, shift, scale)
    return tokens.unpermute(z, self.order, grid.tokens_per_frame), logdet

  forward_and_log_det = __call__

  # ------------------------------------------------------------------ decoding with a KV cache
  def init_cache(self, batch: int, length: int) -> list[layers.KVCache]:
    return layers.init_kv_cache(batch, length, self.num_heads, self.head_dim, self.num_layers, self.dtype)

  def prefill_condition(self, cond: Array, cache: list, grid: TokenGrid) -> list:
    """Writes the condition prefix's K/V at cache positions [0, L) (official reverse_step_condition)."""
    cond_len = self.cond_len(cond)
    cos, sin = self.rope_tables(grid, cond_len)
    h = self.condition_prefix(cond)
    new_cache = []
    for layer, layer_cache in zip(self.layers, cache):
      h, layer_cache = layer(h, cos[:cond_len], sin[:cond_len], None, layer_cache, 0)
      new_cache.append(layer_cache)
    return new_cache

  def decode_step(self,
                  inputs: Array,
                  start: Array | int,
                  cache: list,
                  grid: TokenGrid,
                  cond_len: int,
                  actions: Array | None = None) -> tuple[Array, Array, list]:
    """Runs M shifted inputs [B, M, D] (tokens start-1 .. start+M-2, the first being sos when
    start == 0) at sequence positions cond_len + start + i against the cache; writes their K/V.
    actions: the ids [B, M] of the frames of tokens start .. start+M-1 (action-conditioned blocks).

    Returns (scale, shift) [B, M, D] float32 for tokens start .. start+M-1, and the new cache.
    """
    m = inputs.shape[1]
    cos, sin = self.rope_tables(grid, cond_len)
    pos = cond_len + start
    cos_m = jax.lax.dynamic_slice_in_dim(cos, pos, m, axis=0)
    sin_m = jax.lax.dynamic_slice_in_dim(sin, pos, m, axis=0)
    h = self.embed_inputs(inputs, actions)
    new_cache = []
    for layer, layer_cache in zip(self.layers, cache):
      h, layer_cache = layer(h, cos_m, sin_m, None, layer_cache, pos)
      new_cache.append(layer_cache)
    scale, shift = self.head(h)
    return scale, shift, new_cache


def frame_actions(actions: Array, grid: TokenGrid) -> Array:
  """Per-frame action ids [B, T] -> per-token ids [B, T*N] (a frame's tokens share its action;
  the same in every token order that keeps frames in time order)."""
  return jnp.repeat(actions.astype(jnp.int32), grid.tokens_per_frame, axis=1)


def guided_affine(scale: Array, shift: Array, guidance: float | Array) -> tuple[Array, Array]:
  """Classifier-free guidance of a doubled batch [conditional; null] -> guided (scale, shift).

  With w = guidance and r = min(s_c / s_u, 1)^2 (ALGORITHM.md section 8):
  s = s_c / sqrt(1 + w - w r),  mu = ((1 + w) mu_c - w r mu_u) / (1 + w - w r).
  Inputs [2B, ...] float32, outputs [B, ...].
  """
  s_c, s_u = jnp.split(scale, 2, axis=0)
  mu_c, mu_u = jnp.split(shift, 2, axis=0)
  w = guidance
  r = jnp.square(jnp.minimum(s_c / s_u, 1.0))
  denom = 1 + w - w * r
  return s_c / jnp.sqrt(denom), ((1 + w) * mu_c - (w * r) * mu_u) / denom


def num_params(params) -> int:
  return int(sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))
