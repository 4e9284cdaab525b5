"""Training throughput: step time, tokens/s and (on accelerators) model FLOPs utilisation.

  python -m experiments.bench_train                  # tiny_video and a scaled-up config
  python -m experiments.bench_train --peak_tflops=989 # H100 dense bf16 peak, for MFU

Runs the real compiled train step (flow loss + flow-score-matching denoiser, AdamW) on random
batches over the default mesh, after one compiling step; prints medians.
"""

import statistics
import time

from absl import app, flags
import jax
import numpy as np

from experiments.configs import tiny_video
from starflow_jax import sharding
from starflow_jax.train import Trainer

FLAGS = flags.FLAGS


def define_flags():
  """Registers the flags of this command; called only when it runs as a program, so that
  every module can be imported into one process (tests) without clashing flag names."""
  flags.DEFINE_integer("steps", 10, "timed steps (after one compiling step)")
  flags.DEFINE_float("peak_tflops", 0.0, "device peak TFLOP/s for MFU (0: skip)")
  flags.DEFINE_string("which", "tiny,scaled", "comma list: tiny, scaled")
  flags.DEFINE_string("dtype", "float32", "compute dtype for the scaled-up config")


def scaled_config():
  c = tiny_video.get_config()
  c.data.shapes.update(num_frames=4, height=32, width=32)
  c.model.update(img_size=32,
                 patch_size=2,
                 channels=256,
                 top_block_channels=512,
                 head_dim=64,
                 num_blocks=4,
                 layers_per_block=(1, 1, 1, 6),
                 denoiser_layers=2,
                 compute_dtype=FLAGS.dtype)
  c.text.update(width=64)
  c.train.update(batch_size=8)
  return c


def matmul_flops_per_token(model, text_len: int) -> float:
  """6 x (matmul parameters touched per token): forward + backward of the flow and the denoiser."""
  total = 0
  for i, n in enumerate(model.block_layers):
    w = model.deep_channels if i == model.num_blocks - 1 else model.channels
    total += n * 12 * w * w + 4 * w * model.token_dim
  if model.learnable_self_denoiser:
    total += model.denoiser_layers * 12 * model.channels**2 + 2 * model.channels * model.token_dim
  return 6.0 * total


def bench(name, config):
  mesh = sharding.make_mesh(tuple(config.mesh.shape))
  trainer = Trainer(config, mesh)
  state = trainer.init_state(0)
  s = config.data.shapes
  rng = np.random.default_rng(0)
  batch = sharding.global_batch_from_host(
      {
          "video": rng.integers(0, 256, (config.train.batch_size, s.num_frames, s.height, s.width, 3), np.uint8),
          "tokens": rng.integers(3, 20, (config.train.batch_size, config.model.txt_size)).astype(np.int32)
      }, mesh)
  start = time.perf_counter()
  state, m = trainer.step(state, batch)
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - start
  times = []
  for _ in range(FLAGS.steps):
    start = time.perf_counter()
    state, m = trainer.step(state, batch)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - start)
  step_s = statistics.median(times)
  toks = trainer.experiment.tokens_per_step()
  flops = matmul_flops_per_token(trainer.model_config, config.model.txt_size) * toks
  params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(state.params))
  line = (f"{name:10s} params {params / 1e6:6.2f}M  batch {config.train.batch_size:3d}  "
          f"tokens/step {toks:6d}  compile {compile_s:5.1f}s  step {step_s * 1000:8.1f} ms  "
          f"tokens/s {toks / step_s:9.0f}  model TFLOP/s {flops / step_s / 1e12:.3f}")
  if FLAGS.peak_tflops:
    line += f"  MFU {flops / step_s / 1e12 / FLAGS.peak_tflops:.1%}"
  print(line, flush=True)


def main(argv):
  del argv
  print(f"device: {jax.device_count()} x {jax.devices()[0].device_kind} ({jax.devices()[0].platform})")
  which = FLAGS.which.split(",")
  if "tiny" in which:
    bench("tiny", tiny_video.get_config())
  if "scaled" in which:
    bench("scaled", scaled_config())


if __name__ == "__main__":
  define_flags()
  app.run(main)
