"""Recompute a golden folder's arrays with starflow_jax and compare them with the official ones.

  python -m starflow_jax.interop.parity --golden DIR [--time] [--tolerance 1e-4]

Prints one line per array of DIR/vectors.npz (max abs error, or why it is not recomputed), then
`parity: K/N arrays within 1e-4`. Exit status 0 only if every recomputed array is within the
tolerance and the forward, loss and sequential-sample arrays were among them. With --time, also
`time <array> <seconds>`: the median wall time of a few runs after compilation.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from starflow_jax import inverse, losses
from starflow_jax.errors import UserError
from starflow_jax.interop.golden import GoldenFolder, load_golden, to_channels_first, to_channels_last
from starflow_jax.model import StarFlow

INPUT_ARRAYS = ("x", "y", "y_null", "sample.z", "bruteforce.x")
REQUIRED_PREFIXES = ("forward.", "loss.", "sample.sequential")
JACOBI_MAX_ITER = 32


def median_time(fn: Callable[[], object], repeats: int = 5, warm_up: bool = True) -> float:
  """Median wall time of fn() over `repeats` runs, after one warm-up (compilation) run."""
  if warm_up:
    jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


class GoldenRecomputation:
  """Computes golden arrays by name from one loaded golden folder (memoised per computation)."""

  def __init__(self, golden: GoldenFolder):
    self.golden = golden
    self.config = golden.config
    self.params = jax.device_put(golden.params)  # once, as the official code holds its weights
    v = golden.vectors
    self.cond = jnp.asarray(v["y"]) if "y" in v else None
    self.null_cond = jnp.asarray(v["y_null"]) if "y_null" in v else None
    self._cache: dict[str, tuple[dict[str, np.ndarray], Callable]] = {}
    self.model = StarFlow(self.config)

  # ---------------------------------------------------------------- computations
  def _forward(self):
    x = jnp.asarray(to_channels_last(self.golden.vectors["x"]))
    fn = jax.jit(lambda p, x, c: self.model.apply({"params": p}, x, c))
    run = lambda: fn(self.params, x, self.cond)
    out = run()
    arrays = {"forward.z": to_channels_first(out.z)}
    for k, o in enumerate(out.outputs):
      arrays[f"forward.outputs.{k}"] = np.asarray(o)
    for k, ld in enumerate(out.logdets):
      arrays[f"forward.logdets.{k}"] = np.asarray(ld)
    loss = losses.flow_loss(out.z, out.logdets)
    arrays.update({f"loss.{k}": np.asarray(val) for k, val in loss.items()})
    return arrays, run

  def _inverse(self, z_name: str, **kwargs):
    z = jnp.asarray(to_channels_last(self.golden.vectors[z_name]))
    if kwargs.pop("method") == "jacobi":
      run = lambda: inverse.sample_jacobi(self.config, self.params, z, self.cond, **kwargs)
    else:
      run = lambda: inverse.sample_sequential(self.config, self.params, z, self.cond, **kwargs)
    return to_channels_first(run()), run

  def _denoiser(self):
    x = jnp.asarray(to_channels_last(self.golden.vectors["x"]))
    fn = jax.jit(lambda p, x, c: self.model.apply({"params": p}, x, c, method=StarFlow.denoise))
    run = lambda: fn(self.params, x, self.cond)
    return to_channels_first(run()), run

  def _bruteforce(self):
    x = jnp.asarray(to_channels_last(self.golden.vectors["bruteforce.x"]))
    cond = None if self.cond is None else self.cond[:1]

    def forward_flat(flat):
      return self.model.apply({"params": self.params}, flat.reshape(x.shape), cond).z.reshape(-1)

    def compute():
      out = self.model.apply({"params": self.params}, x, cond)
      sum_logdets = sum(jnp.sum(ld) for ld in out.logdets)
      jac = jax.jacfwd(forward_flat)(x.reshape(-1))
      return sum_logdets, jac

    run = jax.jit(compute)
    sum_logdets, jac = run()
    _, logabsdet = np.linalg.slogdet(np.asarray(jac, np.float64))
    arrays = {
        "bruteforce.sum_logdets": np.asarray(sum_logdets, np.float64),
        "bruteforce.logabsdet": np.asarray(logabsdet)
    }
    return arrays, run

  # ---------------------------------------------------------------- dispatch
  def producer(self, name: str) -> Callable[[], tuple[dict[str, np.ndarray], Callable]] | None:
    """The memoisable computation that yields array `name`, or None if we do not know it."""
    if re.fullmatch(r"(forward\.(z|outputs\.\d+|logdets\.\d+))|loss\.(loss|loss_z|loss_logdet)", name):
      return self._forward
    if name == "roundtrip.x":
      return lambda: self._single(name, self._inverse("forward.z", method="sequential"))
    if name == "sample.sequential":
      return lambda: self._single(name, self._inverse("sample.z", method="sequential"))
    match = re.fullmatch(r"sample\.cfg([0-9.]+)", name)
    if match and self.cond is not None:
      w = float(match.group(1))
      return lambda: self._single(name,
                                  self._inverse("sample.z", method="sequential", guidance=w, null_cond=self.null_cond))
    match = re.fullmatch(r"sample\.jacobi_b(\d+)_th([0-9.eE+-]+)", name)
    if match:
      b, th = int(match.group(1)), float(match.group(2))
      return lambda: self._single(
          name, self._inverse("sample.z", method="jacobi", block_size=b, threshold=th, max_iter=JACOBI_MAX_ITER))
    if name == "denoiser.out" and self.config.learnable_self_denoiser:
      return lambda: self._single(name, self._denoiser())
    if name in ("bruteforce.logabsdet", "bruteforce.sum_logdets"):
      return self._bruteforce
    return None

  @staticmethod
  def _single(name, result):
    array, run = result
    return {name: array}, run

  def compute(self, name: str):
    """(array, timing callable) for `name`, or None if unknown."""
    producer = self.producer(name)
    if producer is None:
      return None
    key = getattr(producer, "__name__", "") if producer.__name__ != "<lambda>" else name
    if key not in self._cache:
      self._cache[key] = producer()
    arrays, run = self._cache[key]
    return arrays[name], run


def run_parity(golden_dir: str, tolerance: float = 1e-4, timing: bool = False, out=sys.stdout) -> bool:
  golden = load_golden(golden_dir)
  recompute = GoldenRecomputation(golden)
  checked, passed, timed = [], 0, {}
  print(f"golden folder {golden_dir}", file=out)
  for name in sorted(golden.vectors):
    ref = golden.vectors[name]
    if name in INPUT_ARRAYS:
      print(f"  {name:28s} input", file=out)
      continue
    result = recompute.compute(name)
    if result is None:
      print(f"  {name:28s} not recomputed (no producer for this array)", file=out)
      continue
    ours, run = result
    ours = np.asarray(ours, np.float64).reshape(ref.shape)
    err = float(np.max(np.abs(ours - ref))) if ref.size else 0.0
    ok = err <= tolerance
    passed += ok
    checked.append(name)
    print(f"  {name:28s} max_abs_err {err:.3e}  {'ok' if ok else 'FAIL'}", file=out)
    if timing:
      timed[name] = run
  if timing:
    seconds_by_run = {}
    for name, run in timed.items():
      if id(run) not in seconds_by_run:
        seconds_by_run[id(run)] = median_time(run)
      print(f"time {name} {seconds_by_run[id(run)]:.6f}", file=out)
  required = all(any(n.startswith(p) for n in checked) for p in REQUIRED_PREFIXES)
  print(f"parity: {passed}/{len(checked)} arrays within {tolerance:g}", file=out)
  if not required:
    print("parity: the forward, loss and sequential-sample arrays were not all checked", file=out)
  return required and passed == len(checked)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m starflow_jax.interop.parity", description=__doc__.split("\n\n")[0])
  parser.add_argument("--golden", required=True, help="golden folder (config.json, weights.safetensors, vectors.npz)")
  parser.add_argument("--time", action="store_true", help="print median wall times after compilation")
  parser.add_argument("--tolerance", type=float, default=1e-4)
  args = parser.parse_args(argv)
  try:
    ok = run_parity(args.golden, args.tolerance, args.time)
  except (FileNotFoundError, UserError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
