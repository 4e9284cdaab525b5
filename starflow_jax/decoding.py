"""Inverting one flow block (noise -> tokens): the pieces every inverse is made of.

A block decoder carries a `DecodeState` (shifted token buffer, KV cache, position offset) through
pure functions: `start_decoding` (the condition prefix), `prefill_tokens` (given tokens, e.g.
conditioning frames, run forward into the cache), `decode_tokens` (a span of tokens one at a
time; `jacobi.solve_run` is the parallel alternative), and `reencode_context` (a sliding window's
fresh cache). `sequential_inverse` composes them for one block; `inverse.invert` composes the
blocks of a model, and `sampling.VideoSampler` schedules the same pieces frame by frame.

Blocks, grids and sizes are static, so one compiled program serves every call of the same shape;
token loops are `lax.fori_loop`s with the KV cache as explicit state.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp

from starflow_jax import tokens
from starflow_jax.flow import FlowBlock, affine_inverse, frame_actions, guided_affine
from starflow_jax.rope import TokenGrid

Array = jnp.ndarray


def call_block(block: FlowBlock, params, method: Callable, *args):
  """Applies a FlowBlock method with the block's own params subtree."""
  return block.apply({"params": params}, *args, method=method)


@flax.struct.dataclass
class DecodeState:
  """What a block decoder carries: the shifted token buffer and the KV cache.

  buffer: [B', S + 1, D] float32 in the block's token order; buffer[:, 0] is the start token
    and buffer[:, i + 1] token i (the transformer's input for token i + 1). B' = 2B with guidance.
  cache: per-layer {"k", "v"} [B', L + S_cache, H, Dh].
  position_offset: int32 scalar; token i sits at cache/RoPE position i - position_offset (a
    sliding window re-bases the cache on its context; 0 otherwise).
  actions: int32 [B', S] the action id of each token's frame (action-conditioned blocks; the
    null action in the guided half), or None.
  """

  buffer: Array
  cache: list
  position_offset: Array
  actions: Any = None


def start_decoding(block: FlowBlock,
                   params,
                   z_perm: Array,
                   grid: TokenGrid,
                   cond: Array | None,
                   guided: bool,
                   actions: Array | None = None) -> DecodeState:
  """Buffer [sos, z] (noise as the initial guess) and a cache holding the condition prefix.

  The cache covers `grid` (its frames may be fewer than z's: a sliding window re-bases it).
  actions: per-token action ids [B, S] (block order) of an action-conditioned block."""
  if actions is not None:
    actions = guided_actions(block, actions.astype(jnp.int32), guided)
  if guided:
    z_perm = jnp.concatenate([z_perm, z_perm], axis=0)
  batch = z_perm.shape[0]
  cond_len = call_block(block, params, FlowBlock.cond_len, cond)
  cache = call_block(block, params, FlowBlock.init_cache, batch, cond_len + grid.num_tokens)
  if cond_len:
    cache = call_block(block, params, FlowBlock.prefill_condition, cond, cache, grid)
  sos = call_block(block, params, FlowBlock.start_tokens, batch)
  return DecodeState(buffer=jnp.concatenate([sos, z_perm.astype(jnp.float32)], axis=1),
                     cache=cache,
                     position_offset=jnp.zeros((), jnp.int32),
                     actions=actions)


def guided_actions(block: FlowBlock, actions: Array, guided: bool) -> Array:
  """Action ids [B, ...] as the decoder's batch: [actions; null action] when guided."""
  if not guided:
    return actions
  return jnp.concatenate([actions, jnp.full_like(actions, block.num_actions)], axis=0)


def token_actions(state: DecodeState, first, count: int) -> Array | None:
  """The action ids [B', count] of tokens first .. first+count-1 (None without actions)."""
  if state.actions is None:
    return None
  return jax.lax.dynamic_slice_in_dim(state.actions, first, count, axis=1)


def write_actions(block: FlowBlock, state: DecodeState, actions: Array, first) -> DecodeState:
  """Sets the action ids [B, M] of tokens first .. first+M-1 (the null action in a guided half)."""
  guided = state.buffer.shape[0] == 2 * actions.shape[0]
  ids = guided_actions(block, actions.astype(jnp.int32), guided)
  return state.replace(actions=jax.lax.dynamic_update_slice_in_dim(state.actions, ids, first, axis=1))


def prefill_tokens(block: FlowBlock, params, state: DecodeState, given_perm: Array, grid: TokenGrid,
                   cond_len: int) -> DecodeState:
  """Writes given tokens [B, S', D] (block order) as tokens 0..S'-1 and runs them forward into
  the cache: decoding then continues at token S' (conditioning frames of I2V / V2V)."""
  reps = state.buffer.shape[0] // given_perm.shape[0]
  given = jnp.concatenate([given_perm] * reps, 0).astype(jnp.float32)
  buffer = jax.lax.dynamic_update_slice_in_dim(state.buffer, given, 1, axis=1)
  inputs = buffer[:, :given.shape[1]]  # shifted: [sos, u_0 .. u_{S'-2}]
  _, _, cache = call_block(block, params, FlowBlock.decode_step, inputs, 0, state.cache, grid, cond_len,
                           token_actions(state, 0, given.shape[1]))
  return state.replace(buffer=buffer, cache=cache)


def reencode_context(block: FlowBlock, params, state: DecodeState, cond: Array | None, start, context_tokens: int,
                     grid: TokenGrid, cond_len: int) -> DecodeState:
  """Sliding window: a fresh cache with the condition prefix and tokens [start - context_tokens,
  start) re-encoded from the start token; token `start` then sits at position context_tokens."""
  cache = jax.tree_util.tree_map(jnp.zeros_like, state.cache)
  if cond_len:
    cache = call_block(block, params, FlowBlock.prefill_condition, cond, cache, grid)
  context = jax.lax.dynamic_slice_in_dim(state.buffer, start + 1 - context_tokens, context_tokens, axis=1)
  inputs = jnp.concatenate([state.buffer[:, :1], context[:, :-1]], axis=1)
  _, _, cache = call_block(block, params, FlowBlock.decode_step, inputs, 0, cache, grid, cond_len,
                           token_actions(state, start - context_tokens, context_tokens))
  return state.replace(cache=cache, position_offset=jnp.asarray(start - context_tokens, jnp.int32))


def affine_params(block: FlowBlock,
                  params,
                  inputs: Array,
                  start,
                  cache,
                  grid: TokenGrid,
                  cond_len: int,
                  guidance: float,
                  actions: Array | None = None) -> tuple[Array, Array, list]:
  """(scale, shift) for tokens start .. start+M-1 from shifted inputs [B', M, D] (and their
  frames' action ids [B', M]), guided if guidance > 0 (then [B, M, D] from the doubled batch),
  and the updated cache."""
  scale, shift, cache = call_block(block, params, FlowBlock.decode_step, inputs, start, cache, grid, cond_len, actions)
  if guidance > 0:
    scale, shift = guided_affine(scale, shift, guidance)
  return scale, shift, cache


def write_tokens(buffer: Array, new_tokens: Array, start) -> Array:
  """Writes tokens [B, M, D] at token index `start` (buffer index start + 1) of every half."""
  reps = buffer.shape[0] // new_tokens.shape[0]
  new_tokens = jnp.concatenate([new_tokens] * reps, axis=0) if reps > 1 else new_tokens
  return jax.lax.dynamic_update_slice_in_dim(buffer, new_tokens, start + 1, axis=1)


def decode_tokens(block: FlowBlock, params, state: DecodeState, z_perm: Array, first, count, grid: TokenGrid,
                  cond_len: int, guidance: float) -> DecodeState:
  """Token-by-token decoding of tokens [first, first + count) in the block's order (a
  `lax.fori_loop`; `first` and `count` may be traced). z_perm: [B, S, D] noise."""
  z_rows = z_perm.astype(jnp.float32)

  def body(i, state: DecodeState) -> DecodeState:
    t = first + i
    inputs = jax.lax.dynamic_slice_in_dim(state.buffer, t, 1, axis=1)  # [B', 1, D]: token t-1
    scale, shift, cache = affine_params(block, params, inputs, t - state.position_offset, state.cache, grid, cond_len,
                                        guidance, token_actions(state, t, 1))
    z_t = jax.lax.dynamic_slice_in_dim(z_rows, t, 1, axis=1)
    x_t = affine_inverse(z_t, shift, scale)  # [B, 1, D]
    return state.replace(buffer=write_tokens(state.buffer, x_t, t), cache=cache)

  return jax.lax.fori_loop(0, count, body, state)


def sequential_inverse(block: FlowBlock,
                       params,
                       z: Array,
                       grid: TokenGrid,
                       cond: Array | None = None,
                       guidance: float = 0.0,
                       given: Array | None = None,
                       actions: Array | None = None) -> Array:
  """Inverts one flow block token by token: raster noise z [B, S, D] -> raster tokens [B, S, D].

  u_i = z_i * s_i + b_i with (s_i, b_i) from u_<i: one transformer step per token against the
  KV cache, in a `lax.fori_loop`. With guidance > 0, `cond` is [cond; null] (2B rows) and each
  token is decoded with the guided affine parameters, both halves continuing from it.
  `given`: raster tokens [B, S', D] taken as tokens 0..S'-1 (whole frames), decoding the rest.
  actions: per-frame action ids [B, T] of an action-conditioned block.
  """
  if block.num_layers == 0:
    return z
  state, z_perm, first, cond_len = begin_block(block, params, z, grid, cond, guidance, given, actions)
  state = decode_tokens(block, params, state, z_perm, first, z.shape[1] - first, grid, cond_len, guidance)
  return end_block(block, state, z.shape[0], grid)


def begin_block(block: FlowBlock,
                params,
                z: Array,
                grid: TokenGrid,
                cond: Array | None,
                guidance: float,
                given: Array | None,
                actions: Array | None = None) -> tuple[DecodeState, Array, int, int]:
  """(state, z in block order, first token to decode, condition length) for inverting a block on
  raster noise z [B, S, D], with `given` raster tokens [B, S', D] prefilled when not None and
  per-frame action ids [B, T] when the block reads actions."""
  frame_len = grid.tokens_per_frame
  z_perm = tokens.permute(z, block.order, frame_len).astype(jnp.float32)
  ids = None if actions is None or not block.num_actions else frame_actions(actions, grid)
  state = start_decoding(block, params, z_perm, grid, cond, guidance > 0, ids)
  cond_len = call_block(block, params, FlowBlock.cond_len, cond)
  if given is None:
    return state, z_perm, 0, cond_len
  state = prefill_tokens(block, params, state, tokens.permute(given, block.order, frame_len), grid, cond_len)
  return state, z_perm, given.shape[1], cond_len


def end_block(block: FlowBlock, state: DecodeState, batch: int, grid: TokenGrid) -> Array:
  """The decoded raster tokens [B, S, D] of a finished block."""
  return tokens.unpermute(state.buffer[:batch, 1:], block.order, grid.tokens_per_frame)
