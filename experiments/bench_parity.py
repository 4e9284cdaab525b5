"""Times the official PyTorch sampler against ours on the golden weights and inputs, alternately.

  python -m experiments.bench_parity --official=/path/to/ml-starflow [--golden=tests/golden/video]

--official is a checkout of apple/ml-starflow: its `transformer_flow.py` (and the `misc/` package
it imports) are imported from there at run time; nothing of the official code is in this
repository. The process needs torch (the CPU build: `pip install torch==2.13.0`), einops and tqdm
beside our requirements.

For every `sample.*` array of each golden folder, both samplers first reproduce the golden array
(both within 1e-4: the timed computations are the recorded ones).
Then, because a shared CPU's speed drifts within minutes, the two are timed alternately in one
process: --rounds rounds, each the median of --calls calls of the official sampler followed by
the median of --calls calls of ours (after compilation). Speedup is the median of the per-round
ratios, worst the smallest; the table is printed as Markdown for BENCHMARKS.md.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import statistics
import sys

from absl import flags
import jax
import numpy as np

from experiments import cli
from starflow_jax.errors import UserError
from starflow_jax.interop.golden import load_golden
from starflow_jax.interop.parity import JACOBI_MAX_ITER, GoldenRecomputation, median_time
from starflow_jax.interop.state_dict_io import read_state_dict

FLAGS = flags.FLAGS
GOLDEN_ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "golden")
TOLERANCE = 1e-4  # both samplers against the recorded arrays (float32 across CPUs and thread counts)


def define_flags():
  """Registers this command's flags (only when it runs as a program)."""
  flags.DEFINE_string("official", None, "a checkout of apple/ml-starflow (holds transformer_flow.py and misc/)")
  flags.DEFINE_list("golden", [os.path.join(GOLDEN_ROOT, n) for n in ("image", "image_cond", "video")],
                    "golden folders (config.json, weights.safetensors, vectors.npz)")
  flags.DEFINE_string("arrays", "sample\\.", "regular expression: which golden arrays to time")
  flags.DEFINE_integer("rounds", 7, "alternating rounds")
  flags.DEFINE_integer("calls", 5, "calls per sampler per round (their median is the round's time)")
  flags.DEFINE_integer("torch_threads", os.cpu_count() or 1, "torch.set_num_threads for the official code")


def import_official(path: str):
  """The official `transformer_flow` module from a checkout, and torch."""
  if not os.path.isfile(os.path.join(path, "transformer_flow.py")):
    raise UserError(f"--official={path} holds no transformer_flow.py: pass a checkout of apple/ml-starflow")
  sys.path.insert(0, os.path.abspath(path))
  try:
    torch = importlib.import_module("torch")
    transformer_flow = importlib.import_module("transformer_flow")
  except ImportError as e:
    raise UserError(f"the official code needs {e.name or e}: pip install torch==2.13.0 einops tqdm") from None
  if not torch.distributed.is_initialized():
    # The official Jacobi loop all-reduces its stop flag (MIN over processes) every iteration.
    # In one process that is the identity: no gloo group, whose round trip would be charged to it.
    torch.distributed.all_reduce = lambda tensor, op=None, **unused: tensor
  return transformer_flow, torch


class OfficialSampler:
  """The official Model of one golden folder with its recorded weights, sampling by array name."""

  def __init__(self, transformer_flow, torch, golden_dir: str):
    self.torch = torch
    with open(os.path.join(golden_dir, "config.json")) as f:
      self.meta = json.load(f)
    self.model = transformer_flow.Model(**self.meta["model_kwargs"]).eval()
    weights = read_state_dict(os.path.join(golden_dir, "weights.safetensors"))
    state = {k: torch.from_numpy(np.array(v)) for k, v in weights.items()}
    self.model.load_state_dict(state, strict=True)
    with np.load(os.path.join(golden_dir, "vectors.npz")) as data:
      self.vectors = {k: torch.from_numpy(data[k]) for k in data.files}

  def call(self, name: str):
    """A zero-argument callable that runs the official sampler for golden array `name`."""
    z, y = self.vectors["sample.z"], self.vectors.get("y")
    kwargs = dict(guidance=0.0)
    if match := re.fullmatch(r"sample\.cfg([0-9.]+)", name):
      y, kwargs = self.torch.cat([y, self.vectors["y_null"]], 0), dict(guidance=float(match.group(1)))
    elif match := re.fullmatch(r"sample\.jacobi_b(\d+)_th([0-9.eE+-]+)", name):
      kwargs.update(jacobi=True,
                    jacobi_block_size=int(match.group(1)),
                    jacobi_th=float(match.group(2)),
                    jacobi_max_iter=JACOBI_MAX_ITER)
    elif name != "sample.sequential":
      return None

    def run():
      with self.torch.no_grad():
        return self.model.reverse(self.torch.clone(z), y, **kwargs)

    return run


def alternate(official_fn, our_fn, rounds: int, calls: int) -> dict:
  """Per round: the official sampler's median time, then ours; their ratios."""
  official, ours = [], []
  for _ in range(rounds):
    official.append(median_time(official_fn, calls, warm_up=False))
    ours.append(median_time(our_fn, calls, warm_up=False))
  ratios = [o / u for o, u in zip(official, ours)]
  return dict(official_s=statistics.median(official),
              ours_s=statistics.median(ours),
              speedup=statistics.median(ratios),
              worst=min(ratios))


def bench_folder(transformer_flow, torch, golden_dir: str, pattern: str, rounds: int, calls: int) -> list[dict]:
  """The timed rows of one golden folder, after both samplers reproduced each array."""
  official = OfficialSampler(transformer_flow, torch, golden_dir)
  ours = GoldenRecomputation(load_golden(golden_dir))
  rows = []
  for name in sorted(n for n in official.vectors if re.match(pattern, n) and n != "sample.z"):
    official_fn, result = official.call(name), ours.compute(name)
    if official_fn is None or result is None:
      continue
    reference = np.asarray(official.vectors[name])
    official_err = float(np.max(np.abs(np.asarray(official_fn()) - reference)))
    our_err = float(np.max(np.abs(np.asarray(result[0]).reshape(reference.shape) - reference)))
    if max(official_err, our_err) > TOLERANCE:
      raise UserError(f"{golden_dir} {name}: the samplers do not reproduce the golden array (official error "
                      f"{official_err:.2e}, ours {our_err:.2e}): is --official the release the goldens came from?")
    jax.block_until_ready(result[1]())  # compiled before timing
    row = dict(golden=os.path.basename(os.path.normpath(golden_dir)), array=name, our_error=our_err)
    row.update(alternate(official_fn, result[1], rounds, calls))
    print(
        f"  {row['golden']} {name}: ours {row['ours_s']:.4f} s, official {row['official_s']:.4f} s, "
        f"{row['speedup']:.1f}x (worst round {row['worst']:.1f}x)",
        flush=True)
    rows.append(row)
  return rows


def print_table(rows: list[dict]) -> None:
  print("\n| golden | array | ours (s) | official (s) | speedup | worst round |")
  print("| --- | --- | ---: | ---: | ---: | ---: |")
  for r in rows:
    print(f"| {r['golden']} | {r['array']} | {r['ours_s']:.4f} | {r['official_s']:.4f} | "
          f"{r['speedup']:.1f}x | {r['worst']:.1f}x |")
  print(f"\nslowest row: {min(r['speedup'] for r in rows):.1f}x ({len(rows)} rows)")


def main(argv):
  del argv
  if FLAGS.rounds < 1 or FLAGS.calls < 1:
    raise UserError(f"--rounds={FLAGS.rounds} and --calls={FLAGS.calls} must be >= 1")
  transformer_flow, torch = import_official(FLAGS.official)
  torch.set_num_threads(FLAGS.torch_threads)
  print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), jax {jax.__version__} "
        f"({jax.devices()[0].platform}); {FLAGS.rounds} rounds x {FLAGS.calls} calls")
  rows = []
  for golden_dir in FLAGS.golden:
    rows += bench_folder(transformer_flow, torch, golden_dir, FLAGS.arrays, FLAGS.rounds, FLAGS.calls)
  if not rows:
    raise UserError(f"no golden array matches --arrays={FLAGS.arrays!r}")
  print_table(rows)


if __name__ == "__main__":
  define_flags()
  flags.mark_flag_as_required("official")
  cli.run(main)
