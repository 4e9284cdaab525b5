"""Inverting the flow (noise -> data): token-by-token decoding with a KV cache, and the model-level
inverse (deep block first, then the shallow blocks in reverse order) with classifier-free guidance.

Everything here is a pure function of (block, params, arrays); blocks, grids and sizes are static,
so one compiled program serves every call of the same shape. The decoding loop is `lax.fori_loop`
over tokens; the KV cache is explicit state carried through the loop.
"""

from __future__ import annotations

import functools
from typing import Callable, Protocol

import flax.struct
import jax
import jax.numpy as jnp

from starflow_jax import model as model_lib
from starflow_jax import tokens
from starflow_jax.config import ModelConfig
from starflow_jax.flow import FlowBlock, affine_inverse, guided_affine
from starflow_jax.rope import TokenGrid

Array = jnp.ndarray


def call_block(block: FlowBlock, params, method: Callable, *args):
  """Applies a FlowBlock method with the block's own params subtree."""
  return block.apply({"params": params}, *args, method=method)


def null_condition(config: ModelConfig, cond: Array) -> Array:
  """The unconditional ("null") condition for guidance: zero embeddings, or label num_classes."""
  if config.conditioning == "class":
    return jnp.full_like(cond, config.num_classes)
  return jnp.zeros_like(cond)


@flax.struct.dataclass
class DecodeState:
  """What a block decoder carries: the shifted token buffer and the KV cache.

  buffer: [B', S + 1, D] float32 in the block's token order; buffer[:, 0] is the start token
    and buffer[:, i + 1] token i (the transformer's input for token i + 1). B' = 2B with guidance.
  cache: per-layer {"k", "v"} [B', L + S_cache, H, Dh].
  position_offset: int32 scalar; token i sits at cache/RoPE position i - position_offset (a
    sliding window re-bases the cache on its context; 0 otherwise).
  """

  buffer: Array
  cache: list
  position_offset: Array


def start_decoding(block: FlowBlock, params, z_perm: Array, grid: TokenGrid, cond: Array | None,
                   guided: bool) -> DecodeState:
  """Buffer [sos, z] (noise as the initial guess) and a cache holding the condition prefix.

  The cache covers `grid` (its frames may be fewer than z's: a sliding window re-bases it)."""
  if guided:
    z_perm = jnp.concatenate([z_perm, z_perm], axis=0)
  batch = z_perm.shape[0]
  cond_len = call_block(block, params, FlowBlock.cond_len, cond)
  cache = call_block(block, params, FlowBlock.init_cache, batch, cond_len + grid.num_tokens)
  if cond_len:
    cache = call_block(block, params, FlowBlock.prefill_condition, cond, cache, grid)
  sos = call_block(block, params, FlowBlock.start_tokens, batch)
  return DecodeState(buffer=jnp.concatenate([sos, z_perm.astype(jnp.float32)], axis=1), cache=cache,
                     position_offset=jnp.zeros((), jnp.int32))


def affine_params(block: FlowBlock, params, inputs: Array, start, cache, grid: TokenGrid,
                  cond_len: int, guidance: float) -> tuple[Array, Array, list]:
  """(scale, shift) for tokens start .. start+M-1 from shifted inputs [B', M, D], guided if
  guidance > 0 (then [B, M, D] from the doubled batch), and the updated cache."""
  scale, shift, cache = call_block(block, params, FlowBlock.decode_step, inputs, start, cache,
                                   grid, cond_len)
  if guidance > 0:
    scale, shift = guided_affine(scale, shift, guidance)
  return scale, shift, cache


def write_tokens(buffer: Array, new_tokens: Array, start) -> Array:
  """Writes tokens [B, M, D] at token index `start` (buffer index start + 1) of every half."""
  reps = buffer.shape[0] // new_tokens.shape[0]
  new_tokens = jnp.concatenate([new_tokens] * reps, axis=0) if reps > 1 else new_tokens
  return jax.lax.dynamic_update_slice_in_dim(buffer, new_tokens, start + 1, axis=1)


def decode_tokens(block: FlowBlock, params, state: DecodeState, z_perm: Array, first, count: int,
                  grid: TokenGrid, cond_len: int, guidance: float) -> DecodeState:
  """Token-by-token decoding of tokens [first, first + count) in the block's order (a
  `lax.fori_loop`; `first` may be traced, `count` is static). z_perm: [B, S, D] noise."""
  z_rows = z_perm.astype(jnp.float32)

  def body(i, state: DecodeState) -> DecodeState:
    t = first + i
    inputs = jax.lax.dynamic_slice_in_dim(state.buffer, t, 1, axis=1)  # [B', 1, D]: token t-1
    scale, shift, cache = affine_params(block, params, inputs, t - state.position_offset,
                                        state.cache, grid, cond_len, guidance)
    z_t = jax.lax.dynamic_slice_in_dim(z_rows, t, 1, axis=1)
    x_t = affine_inverse(z_t, shift, scale)  # [B, 1, D]
    return state.replace(buffer=write_tokens(state.buffer, x_t, t), cache=cache)

  return jax.lax.fori_loop(0, count, body, state)


def sequential_inverse(block: FlowBlock, params, z: Array, grid: TokenGrid, cond: Array | None = None,
                       guidance: float = 0.0) -> Array:
  """Inverts one flow block token by token: raster noise z [B, S, D] -> raster tokens [B, S, D].

  u_i = z_i * s_i + b_i with (s_i, b_i) from u_<i: one transformer step per token against the
  KV cache, in a `lax.fori_loop`. With guidance > 0, `cond` is [cond; null] (2B rows) and each
  token is decoded with the guided affine parameters, both halves continuing from it.
  """
  if block.num_layers == 0:
    return z
  z_perm = tokens.permute(z, block.order, grid.tokens_per_frame)
  state = start_decoding(block, params, z_perm, grid, cond, guidance > 0)
  cond_len = call_block(block, params, FlowBlock.cond_len, cond)
  state = decode_tokens(block, params, state, z_perm, 0, z.shape[1], grid, cond_len, guidance)
  x = state.buffer[: z.shape[0], 1:]
  return tokens.unpermute(x, block.order, grid.tokens_per_frame)


class BlockInverse(Protocol):
  def __call__(self, block: FlowBlock, params, z: Array, grid: TokenGrid, cond: Array | None,
               guidance: float) -> Array: ...


def inverse(config: ModelConfig, params, z: Array, cond: Array | None = None, *,
            guidance: float = 0.0, null_cond: Array | None = None,
            block_inverse: BlockInverse = sequential_inverse,
            return_intermediates: bool = False):
  """Noise z (latent layout [B, H, W, C] or [B, T, H, W, C]) -> latents x, inverting every block.

  Deep block first (guided when guidance > 0, with `null_cond` or the default null condition),
  then the shallow blocks in reverse order, per frame when they are frame-local; shallow blocks
  are guided only when they are themselves conditioned (cond_top_only=False), as officially.
  Jit it with `config`, `guidance` and `block_inverse` static.
  """
  video, is_image = tokens.as_video(z)
  z_tok, grid = tokens.patchify(video, config.patch_size)  # [B, T, N, D]
  b, t, n, d = z_tok.shape
  guided = guidance > 0 and cond is not None
  deep_cond = cond
  if guided:
    null = null_condition(config, cond) if null_cond is None else null_cond
    deep_cond = jnp.concatenate([cond, null], axis=0)
  deep = model_lib.deep_block(config)
  h = block_inverse(deep, params["deep_block"], z_tok.reshape(b, t * n, d), grid, deep_cond,
                    guidance if guided else 0.0)
  h = h.reshape(b, t, n, d)
  intermediates = [h]
  s_grid = model_lib.shallow_grid(config, grid)
  shallow_guided = guided and not config.cond_top_only
  shallow_cond = None if config.cond_top_only else (deep_cond if shallow_guided else cond)
  for i in reversed(range(config.num_blocks - 1)):
    block = model_lib.shallow_block(config, i)
    h_in = model_lib.to_shallow_batch(config, h)
    h = block_inverse(block, params.get(f"shallow_block_{i}"), h_in, s_grid, shallow_cond,
                      guidance if shallow_guided else 0.0)
    h = h.reshape(b, t, n, d)
    intermediates.append(h)
  x = tokens.unpatchify(h, grid, config.patch_size)
  x = x[:, 0] if is_image else x
  if return_intermediates:
    return x, intermediates
  return x


@functools.partial(jax.jit, static_argnames=("config", "guidance"))
def sample_sequential(config: ModelConfig, params, z: Array, cond: Array | None = None,
                      guidance: float = 0.0, null_cond: Array | None = None) -> Array:
  """Compiled `inverse` with token-by-token decoding of every block."""
  return inverse(config, params, z, cond, guidance=guidance, null_cond=null_cond)
