"""What a Jacobi iteration costs in token steps, measured on the weights and machine at hand.

Method 'auto' (`VideoSampler.choose_methods`) keeps Jacobi for a flow block where its iterations
cost less than token-by-token decoding. One iteration over an m-token block is one pass of the
block's transformer on m tokens against the KV cache (and the stop statistic); one token step is
the same pass on one token. Their ratio depends on the model and the machine, not only on the
platform: on a 2-core CPU a 16-token iteration costs ~3 steps for a 96-wide deep block (its
weights sit in cache: compute-bound) and ~2 for a 512 x 6 one (each step streams its 75 MB of
weights from memory; 16 tokens ride along almost free). So it is timed, on the decoders
themselves: `jacobi.solve_block` held to `ITERATIONS` iterations against `decoding.decode_tokens`
of as many tokens, each compiled once and run on its own output state (donated, as the sampler
runs them), the fastest of a few runs counting.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from starflow_jax import decoding, distributed, jacobi
from starflow_jax.flow import FlowBlock
from starflow_jax.jacobi import JacobiOptions
from starflow_jax.rope import TokenGrid

Array = jnp.ndarray
ITERATIONS = 8  # per timed call: iterations of a Jacobi block, or tokens decoded one by one
MIN_SECONDS = 0.02  # per timed run (calls are repeated up to this), against timer and scheduler noise


def _seconds_per_call(run, state, runs: int = 3) -> float:
  """Fastest time of one call `state = run(state)`, over `runs` runs of enough calls."""
  state = jax.block_until_ready(run(state))  # compiles
  start = time.perf_counter()
  state = jax.block_until_ready(run(state))
  calls = max(1, int(MIN_SECONDS / max(time.perf_counter() - start, 1e-6)))
  calls = int(distributed.broadcast_from_primary(np.int32(calls)))  # as many collective runs on every host
  best = float("inf")
  for _ in range(runs):
    start = time.perf_counter()
    for _ in range(calls):
      state = run(state)
    jax.block_until_ready(state)
    best = min(best, (time.perf_counter() - start) / calls)
  return best


def iteration_costs(block: FlowBlock,
                    params,
                    z: Array,
                    grid: TokenGrid,
                    cond: Array | None,
                    guidance: float,
                    sizes,
                    options: JacobiOptions,
                    actions: Array | None = None) -> dict[int, float]:
  """{m: one Jacobi iteration over m tokens of `block`, in token steps} for the sizes given, on
  raster noise z [B, S, D] under `cond` (guided as the inverse is; S >= ITERATIONS tokens).

  Every process gets process 0's figures (the plan they imply must be the same everywhere)."""
  cond_len = decoding.call_block(block, params, FlowBlock.cond_len, cond)
  begin = jax.jit(lambda p, z, c, a: decoding.begin_block(block, p, z, grid, c, guidance, None, a)[:2])
  steps = min(ITERATIONS, z.shape[1])
  held = dataclasses.replace(options, threshold=0.0, max_iter=ITERATIONS, fallback_after=None)

  def decode(p, state, z_perm):
    return decoding.decode_tokens(block, p, state, z_perm, 0, steps, grid, cond_len, guidance)

  def solve(p, state, z_perm, m):
    return jacobi.solve_block(block, p, state, z_perm, jnp.int32(0), m, grid, cond_len, guidance, held)[0]

  def per_call(fn, *static):
    state, z_perm = begin(params, z, cond, actions)
    compiled = jax.jit(lambda p, s, zp: fn(p, s, zp, *static), donate_argnums=1)
    return _seconds_per_call(lambda s: compiled(params, s, z_perm), state)

  step = per_call(decode) / steps
  costs = {m: per_call(solve, m) / ITERATIONS / step for m in sorted(set(sizes))}
  return dict(zip(costs, (float(c) for c in distributed.broadcast_from_primary(list(costs.values())))))
