"""Block-wise Jacobi inversion of an autoregressive flow block (ALGORITHM.md section 8).

The S tokens of a block are split into consecutive blocks [a, a+m). Everything before a is fixed
and KV-cached; inside the block all tokens are updated in parallel,
  x^(k+1)_i = mu(x^(k)_<i) + s(x^(k)_<i) z_i,
until mean((x^(k+1) - x^(k))^2) / mean((x^(k+1))^2) < tau or max_iter iterations. Each block is
one `lax.while_loop` (static block size m, dynamic start a); blocks of equal size run in a
`lax.fori_loop`. The stop statistic is a mean over the global batch, so under jit with a sharded
batch XLA reduces it across devices inside the loop: no host round trip, no process group.

Two variants of the official details (both keep the official cache behaviour: after the last
iteration the cache holds K/V of that iteration's inputs, one iterate behind the stored tokens):
  * reference_compatible=True reproduces apple/ml-starflow exactly (golden `sample.jacobi_*`):
    at iteration 0 of a block with a > N, the whole shifted input window comes from one frame
    earlier, its first element included, and the stop statistic compares with the noise.
  * reference_compatible=False (our default): the block's initial iterate is the previous frame's
    converged tokens at the same positions (blocks with a >= N), while the first input stays the
    true token a-1; in the first frame, the block before's converged tokens (the rows above, in
    the block's order: a trained model's frames are smooth, its noise is not). Then tau = 0 with
    max_iter >= m equals sequential decoding exactly (any initial iterate does).
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp

from starflow_jax import decoding
from starflow_jax.decoding import DecodeState, affine_params, token_actions, write_tokens
from starflow_jax.errors import UserError
from starflow_jax.flow import FlowBlock, affine_inverse
from starflow_jax.rope import TokenGrid

Array = jnp.ndarray


@dataclasses.dataclass(frozen=True)
class JacobiOptions:
  """Static settings of the Jacobi solver (hashable: a jit static argument).

  block_size: tokens per Jacobi block while the block starts within the first frame
    (start <= N, the official rule); later_block_size (default 4 * block_size) afterwards.
  threshold: tau of the relative-change stop rule; max_iter: iteration cap per block.
  video_init: initialise a block from the previous frame's tokens (video-aware).
  spatial_init: initialise a first-frame block from the block before it (not reference_compatible).
  reference_compatible: reproduce the official code's quirks exactly (see the module docstring).
  fallback_after: a block not converged after this many iterations is finished token by token
    from its first k tokens, exact after k iterations (`solve_block`); None: iterate to max_iter.
  """

  block_size: int = 64
  later_block_size: int | None = None
  threshold: float = 1e-3
  max_iter: int = 32
  video_init: bool = True
  spatial_init: bool = True
  reference_compatible: bool = False
  fallback_after: int | None = None

  def __post_init__(self):
    if self.block_size <= 0 or (self.later_block_size is not None and self.later_block_size <= 0):
      raise UserError(f"Jacobi block sizes must be positive, got block_size={self.block_size}, "
                      f"later_block_size={self.later_block_size}")
    if self.max_iter <= 0:
      raise UserError(f"max_iter={self.max_iter} must be at least 1")
    if self.threshold < 0:
      raise UserError(f"threshold={self.threshold} must be >= 0 (0 iterates to max_iter)")
    if self.fallback_after is not None and self.fallback_after <= 0:
      raise UserError(f"fallback_after={self.fallback_after} (--jacobi_fallback) must be >= 1 iteration")
    if self.fallback_after is not None and self.reference_compatible:
      raise UserError("fallback_after (--jacobi_fallback) is not part of the official Jacobi: "
                      "use it without reference_compatible")

  @property
  def later_size(self) -> int:
    return self.later_block_size or 4 * self.block_size


def block_schedule(start: int, end: int, frame_len: int, options: JacobiOptions) -> list[tuple[int, int]]:
  """[(a, m)] Jacobi blocks covering tokens [start, end): size b while a <= N, then 4b, cut at end."""
  blocks, a = [], start
  while a < end:
    m = options.block_size if a <= frame_len else options.later_size
    m = min(m, end - a)
    blocks.append((a, m))
    a += m
  return blocks


def group_runs(schedule: list[tuple[int, int]], max_count: int | None = None) -> list[tuple[int, int, int]]:
  """Consecutive equal-size blocks -> [(first_start, size, count)], at most max_count per run."""
  runs = []
  for a, m in schedule:
    if runs and runs[-1][1] == m and runs[-1][0] + runs[-1][1] * runs[-1][2] == a and (max_count is None or
                                                                                       runs[-1][2] < max_count):
      first, size, count = runs[-1]
      runs[-1] = (first, size, count + 1)
    else:
      runs.append((a, m, 1))
  return runs


@flax.struct.dataclass
class _BlockCarry:
  state: DecodeState
  iteration: Array  # int32 scalar
  done: Array  # bool scalar
  converged: Array  # bool scalar: the stop statistic fell below the threshold


def solve_block(block: FlowBlock, params, state: DecodeState, z_perm: Array, start: Array, size: int, grid: TokenGrid,
                cond_len: int, guidance: float, options: JacobiOptions) -> tuple[DecodeState, Array]:
  """Jacobi iterations for tokens [start, start + size) (a `lax.while_loop`); returns the state
  and the number of iterations run. `start` is the absolute token index; the cache position is
  start - state.position_offset (sliding windows re-base the cache).

  With options.fallback_after = K, a block still changing after K iterations is finished token by
  token from token start + K: after k iterations tokens start .. start+k-1 are the sequential
  solution (token i's inputs are exact after i iterations) and the cache holds K/V of the
  inputs up to token start+k-2, so decoding on from there is exact. The count returned is then
  K plus the tokens decoded one by one (each a step)."""
  frame_len = grid.tokens_per_frame
  batch = z_perm.shape[0]
  z_block = jax.lax.dynamic_slice_in_dim(z_perm, start, size, axis=1).astype(jnp.float32)  # [B, m, D]
  has_prev_frame = start > frame_len if options.reference_compatible else start >= frame_len
  use_prev = jnp.logical_and(options.video_init, has_prev_frame)
  prev_start = jnp.maximum(start - frame_len, 0)
  buffer = state.buffer
  if (options.video_init or options.spatial_init) and not options.reference_compatible:
    # Initial iterate: the previous frame's tokens at the same positions, else (first frame) the
    # block before's, else the noise the buffer holds.
    spatial = jnp.logical_and(options.spatial_init, jnp.logical_and(start >= size, jnp.logical_not(use_prev)))
    source = jnp.where(use_prev, prev_start, jnp.where(spatial, start - size, start))
    buffer = jax.lax.dynamic_update_slice_in_dim(buffer,
                                                 jax.lax.dynamic_slice_in_dim(buffer, source + 1, size, axis=1),
                                                 start + 1,
                                                 axis=1)

  def body(carry: _BlockCarry) -> _BlockCarry:
    buf = carry.state.buffer
    inputs = jax.lax.dynamic_slice_in_dim(buf, start, size, axis=1)  # [B', m, D]: tokens a-1..a+m-2
    if options.reference_compatible and options.video_init:
      prev_inputs = jax.lax.dynamic_slice_in_dim(buf, prev_start, size, axis=1)
      inputs = jnp.where(jnp.logical_and(use_prev, carry.iteration == 0), prev_inputs, inputs)
    position = start - carry.state.position_offset
    scale, shift, cache = affine_params(block, params, inputs, position, carry.state.cache, grid, cond_len, guidance,
                                        token_actions(carry.state, start, size))
    new_x = affine_inverse(z_block, shift, scale)  # [B, m, D]
    old_x = jax.lax.dynamic_slice_in_dim(buf, start + 1, size, axis=1)[:batch]
    change = jnp.mean(jnp.square(new_x - old_x)) / jnp.mean(jnp.square(new_x))
    iteration = carry.iteration + 1
    converged = change < options.threshold
    done = jnp.logical_or(converged, iteration >= cap)
    new_state = carry.state.replace(buffer=write_tokens(buf, new_x, start), cache=cache)
    return _BlockCarry(new_state, iteration, done, converged)

  cap = options.max_iter if options.fallback_after is None else min(options.fallback_after, options.max_iter, size)
  carry = _BlockCarry(state.replace(buffer=buffer), jnp.zeros((), jnp.int32), jnp.zeros((), bool), jnp.zeros((), bool))
  carry = jax.lax.while_loop(lambda c: jnp.logical_not(c.done), body, carry)
  if options.fallback_after is None:
    return carry.state, carry.iteration
  exact = jnp.where(carry.converged, size, carry.iteration)  # tokens [start, start + exact) are final
  state = decoding.decode_tokens(block, params, carry.state, z_perm, start + exact, size - exact, grid, cond_len,
                                 guidance)
  return state, carry.iteration + (size - exact)


def solve_run(block: FlowBlock, params, state: DecodeState, z_perm: Array, first_start: Array, size: int, count: int,
              grid: TokenGrid, cond_len: int, guidance: float, options: JacobiOptions) -> tuple[DecodeState, Array]:
  """`count` consecutive blocks of `size` tokens from `first_start` (a `lax.fori_loop`).

  Returns the state and the iterations of each block [count]."""

  def body(j, carry):
    state, iterations = carry
    state, its = solve_block(block, params, state, z_perm, first_start + j * size, size, grid, cond_len, guidance,
                             options)
    return state, iterations.at[j].set(its)

  return jax.lax.fori_loop(0, count, body, (state, jnp.zeros((count,), jnp.int32)))


def decode_span(block: FlowBlock, params, state: DecodeState, z_perm: Array, first: Array, size: int, count: int,
                grid: TokenGrid, cond_len: int, guidance: float,
                options: JacobiOptions | None) -> tuple[DecodeState, Array]:
  """Tokens [first, first + size * count) of a block: one at a time when `options` is None
  (size 1), else `count` Jacobi blocks of `size`. Returns the state and the iterations of each
  Jacobi block ([count]; ones for token-by-token decoding)."""
  if options is None:
    state = decoding.decode_tokens(block, params, state, z_perm, first, size * count, grid, cond_len, guidance)
    return state, jnp.ones((size * count,), jnp.int32)
  return solve_run(block, params, state, z_perm, first, size, count, grid, cond_len, guidance, options)


def pays_off(iterations, sizes, iteration_cost, margin: float = 0.9) -> bool:
  """Whether Jacobi beats token-by-token decoding for a flow block whose Jacobi blocks of `sizes`
  tokens took `iterations`: the iterations' cost, `iteration_cost(m)` token steps each for a block
  of m tokens (one iteration against one step of sequential decoding; a number: the same for
  every m), is below `margin` of the sequential cost, one step per token."""
  cost = iteration_cost if callable(iteration_cost) else (lambda m: iteration_cost)
  return sum(float(k) * cost(int(m)) for k, m in zip(iterations, sizes)) < margin * float(sum(sizes))


def span_calls(start: int,
               end: int,
               frame_len: int,
               options: JacobiOptions | None,
               per_frame: bool = False) -> list[tuple[int, int, int]]:
  """The `decode_span` calls (first token, size, count) that decode tokens [start, end):
  token by token (options None) or the Jacobi schedule, whole or cut into calls of about one
  frame each (`per_frame`: what a frame-by-frame scheduler runs)."""
  if options is None:
    if not per_frame:
      return [(start, 1, end - start)] if end > start else []
    calls, a = [], start
    while a < end:
      count = min(frame_len - a % frame_len, end - a)
      calls.append((a, 1, count))
      a += count
    return calls
  runs = group_runs(block_schedule(start, end, frame_len, options))
  if not per_frame:
    return runs
  return [call for first, size, count in runs for call in _split_run(first, size, count, max(1, frame_len // size))]


def _split_run(first: int, size: int, count: int, per_call: int) -> list[tuple[int, int, int]]:
  """Splits `count` blocks into calls of `per_call` blocks (the last may be shorter)."""
  calls = []
  while count > 0:
    c = min(per_call, count)
    calls.append((first, size, c))
    first += size * c
    count -= c
  return calls


def jacobi_inverse(block: FlowBlock,
                   params,
                   z: Array,
                   grid: TokenGrid,
                   cond: Array | None = None,
                   guidance: float = 0.0,
                   given: Array | None = None,
                   options: JacobiOptions = JacobiOptions(),
                   return_iterations: bool = False,
                   actions: Array | None = None):
  """Inverts one flow block by block-wise Jacobi: raster noise z [B, S, D] -> raster tokens.

  Same contract as `decoding.sequential_inverse` (cond is [cond; null] when guidance > 0; `given`
  raster tokens are kept; per-frame `actions` for an action-conditioned block). With return_iterations, also returns the iterations of every Jacobi
  block (int32 [num_blocks]).
  """
  if block.num_layers == 0:
    return (z, jnp.zeros((0,), jnp.int32)) if return_iterations else z
  state, z_perm, first, cond_len = decoding.begin_block(block, params, z, grid, cond, guidance, given, actions)
  iterations = [jnp.zeros((0,), jnp.int32)]
  for start, size, count in span_calls(first, z.shape[1], grid.tokens_per_frame, options):
    state, its = solve_run(block, params, state, z_perm, jnp.int32(start), size, count, grid, cond_len, guidance,
                           options)
    iterations.append(its)
  x = decoding.end_block(block, state, z.shape[0], grid)
  if return_iterations:
    return x, jnp.concatenate(iterations)
  return x
