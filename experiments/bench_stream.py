"""Streaming benchmark: time to first frame, per-frame latency and frames/s of `VideoSampler.stream`.

  python -m experiments.bench_stream                                   # demo + scaled-up, random weights
  python -m experiments.bench_stream --model_dir=demo_output/run/model --which=demo   # a trained demo model

Per model and decoding method: one stream of --frames frames is run first (it compiles every
program), then one is timed frame by frame: the time to the first frame, the median and 90th
percentile gap between frames, frames/s after the first, and the frames/s of `generate` for the
same clip in the same run (a stream does the same work, one frame at a time). The window is
--window latent frames, so the stream slides it (--frames / --window times).
"""

import statistics
import time

from absl import app, flags
import jax
import numpy as np

from experiments.bench_sampling import DEMO, SCALED, random_bundle
from starflow_jax import checkpoint
from starflow_jax.jacobi import JacobiOptions
from starflow_jax.sampling import SamplingOptions, VideoSampler, options_from_defaults

FLAGS = flags.FLAGS
METHODS = (("sequential", None), ("jacobi", (16, 1e-3)), ("jacobi", (64, 1e-3)), ("auto", (16, 1e-3)))


def define_flags():
  flags.DEFINE_string("model_dir", None, "a trained model directory for the demo rows")
  flags.DEFINE_integer("frames", 18, "frames per stream")
  flags.DEFINE_integer("window", 6, "latent frames the deep block attends to (the stream slides it)")
  flags.DEFINE_string("which", "demo,scaled", "comma list of models: demo, scaled")
  flags.DEFINE_float("guidance", 2.0, "classifier-free guidance")


def sampler_for(bundle, method: str, jacobi_args) -> VideoSampler:
  jacobi = JacobiOptions(block_size=jacobi_args[0], threshold=jacobi_args[1]) if jacobi_args else JacobiOptions()
  if bundle.sampling_defaults:  # a trained model: its own denoiser and noise level
    options = options_from_defaults(bundle.sampling_defaults,
                                    method=method,
                                    guidance=FLAGS.guidance,
                                    jacobi_block_size=jacobi.block_size,
                                    jacobi_threshold=jacobi.threshold,
                                    window=FLAGS.window,
                                    progress=False)
  else:
    options = SamplingOptions(method=method,
                              guidance=FLAGS.guidance,
                              jacobi=jacobi,
                              denoise="none",
                              window=FLAGS.window,
                              progress=False)
  return VideoSampler(bundle, options)


def timed_stream(sampler: VideoSampler, prompts, cond) -> list[float]:
  """Seconds from the call to each frame's arrival (on the host)."""
  start, arrivals = time.perf_counter(), []
  for frame in sampler.stream(prompts, FLAGS.frames, seed=1, cond=cond):
    np.asarray(frame)
    arrivals.append(time.perf_counter() - start)
  return arrivals


def bench(name: str, bundle) -> None:
  cfg = bundle.config
  cond, prompts = None, None
  if bundle.text_config is not None:
    prompts = ["a red circle moving left"]
  elif cfg.conditioning == "text":
    cond = jax.random.normal(jax.random.PRNGKey(1), (1, cfg.txt_size, cfg.txt_dim))
  print(f"\n== {name}: deep width {cfg.deep_channels} x {cfg.block_layers[-1]} layers, "
        f"{(cfg.img_size // cfg.patch_size)**2} tokens/frame, {FLAGS.frames} frames, window {FLAGS.window}, "
        f"batch 1, guidance {FLAGS.guidance}")
  print(f"{'method':24s} {'first_s':>8s} {'gap_med_s':>9s} {'gap_p90_s':>9s} {'stream_fps':>10s} {'generate_fps':>12s}")
  for method, jacobi_args in METHODS:
    sampler = sampler_for(bundle, method, jacobi_args)
    timed_stream(sampler, prompts, cond)  # compiles
    arrivals = timed_stream(sampler, prompts, cond)
    gaps = np.diff(arrivals)
    start = time.perf_counter()
    jax.block_until_ready(sampler.generate(prompts, FLAGS.frames, seed=1, cond=cond))
    generate_fps = FLAGS.frames / (time.perf_counter() - start)
    label = method if not jacobi_args else f"{method} b={jacobi_args[0]} tau={jacobi_args[1]:g}"
    if sampler.plan:
      label += " (" + ",".join(v[0] for v in sampler.plan.values()) + ")"
    print(
        f"{label:24s} {arrivals[0]:8.3f} {statistics.median(gaps):9.3f} {np.percentile(gaps, 90):9.3f} "
        f"{(len(arrivals) - 1) / (arrivals[-1] - arrivals[0]):10.2f} {generate_fps:12.2f}",
        flush=True)


def main(argv):
  del argv
  print(f"device: {jax.devices()[0].device_kind} ({jax.devices()[0].platform}), jax {jax.__version__}")
  which = FLAGS.which.split(",")
  if "demo" in which:
    bundle = checkpoint.load_bundle(FLAGS.model_dir) if FLAGS.model_dir else random_bundle(DEMO)
    bench("demo" + (" (trained)" if FLAGS.model_dir else " (random weights)"), bundle)
  if "scaled" in which:
    bench("scaled-up (random weights)", random_bundle(SCALED))


if __name__ == "__main__":
  define_flags()
  app.run(main)
