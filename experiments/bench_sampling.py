"""Sampling benchmark: sequential vs block-wise Jacobi decoding, all in one run after compilation.

  python -m experiments.bench_sampling                       # demo config + scaled-up config
  python -m experiments.bench_sampling --model_dir=/tmp/tiny_video/model   # a trained demo model

For each model it prints the compile time and, per method, the wall time per generated frame
(the whole pipeline: deep block, shallow blocks, no denoiser), the mean Jacobi iterations per
block of the deep block, and the speedup over our own compiled sequential decoder. Models without
--model_dir use random weights (N(0, 0.02) on top of the initialisation, so blocks are not the
identity); iteration counts of trained models differ.
"""

import functools
import statistics
import time

from absl import flags
import jax
import numpy as np

from experiments import cli
from starflow_jax import checkpoint, inverse, model as model_lib, tokens
from starflow_jax.checkpoint import ModelBundle
from starflow_jax.config import ModelConfig
from starflow_jax.jacobi import JacobiOptions, jacobi_inverse
from starflow_jax.sampling import SamplingOptions, VideoSampler

FLAGS = flags.FLAGS


def define_flags():
  """Registers the flags of this command; called only when it runs as a program, so that
  every module can be imported into one process (tests) without clashing flag names."""
  flags.DEFINE_string("model_dir", None, "a trained model directory for the demo-size rows")
  flags.DEFINE_integer("frames", 6, "frames per generated clip")
  flags.DEFINE_integer("batch", 2, "clips per call")
  flags.DEFINE_integer("repeats", 3, "timed runs (median) after the compiling run")
  flags.DEFINE_string("which", "demo,scaled", "comma list of models: demo, scaled")
  flags.DEFINE_float("guidance", 2.0, "classifier-free guidance for every row")
  flags.DEFINE_list(
      "prompts", [], "captions to condition a trained text-to-video model on (one per clip, "
      "cycled; default: random text embeddings)")
  flags.DEFINE_list("rows", ["sequential", "jacobi", "fallback", "auto"],
                    "kinds of rows to run: sequential, jacobi, fallback (Jacobi with fallback_after), auto")


DEMO = dict(in_channels=3,
            img_size=16,
            patch_size=2,
            channels=64,
            top_block_channels=96,
            num_blocks=3,
            layers_per_block=(1, 1, 3),
            head_dim=32,
            txt_size=16,
            txt_dim=64,
            cond_top_only=True,
            temporal_causal=2,
            shallow_block_local=True,
            soft_clip=4.0)
SCALED = dict(in_channels=4,
              img_size=16,
              patch_size=1,
              channels=256,
              top_block_channels=512,
              num_blocks=4,
              layers_per_block=(1, 1, 1, 6),
              head_dim=64,
              txt_size=16,
              txt_dim=64,
              cond_top_only=True,
              temporal_causal=2,
              shallow_block_local=True,
              soft_clip=4.0)
# (method, (block size, tau, fallback_after)): fallback_after K finishes a block still changing
# after K iterations token by token (JacobiOptions.fallback_after).
# auto: per flow block, Jacobi (b=16, tau 1e-3) or sequential, measured in the compiling call.
METHODS = (("sequential", None), ("jacobi", (16, 1e-3, None)), ("jacobi", (64, 1e-3, None)),
           ("jacobi", (64, 1e-4, None)), ("jacobi", (256, 1e-3, None)), ("jacobi", (16, 1e-3, 4)),
           ("jacobi", (64, 1e-3, 8)), ("auto", (16, 1e-3, None)))


def random_bundle(values: dict) -> ModelBundle:
  config = ModelConfig(**values).validate()
  params = model_lib.init_params(config, jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map(lambda p: p + 0.02 * rng.standard_normal(p.shape).astype(np.float32), params)
  return ModelBundle(config, params)


def timed(fn, repeats):
  start = time.perf_counter()
  jax.block_until_ready(fn())
  compile_s = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return compile_s, statistics.median(times)


def condition(bundle: ModelBundle, frames: int):
  """(condition, null condition) of the timed calls: the --prompts' (a trained model with its
  text encoder), else random embeddings (None for a model without text)."""
  cfg = bundle.config
  if cfg.conditioning is None:
    return None, None  # (e.g. a world model: its actions are then the null action)
  if FLAGS.prompts:
    prompts = [FLAGS.prompts[i % len(FLAGS.prompts)] for i in range(FLAGS.batch)]
    return VideoSampler(bundle, SamplingOptions(progress=False)).encode_prompts(prompts, frames)
  cond = jax.random.normal(jax.random.PRNGKey(1), (FLAGS.batch, cfg.txt_size, cfg.txt_dim))
  return cond, None


def mean_jacobi_iterations(bundle, cond, null_cond, z, options, guidance):
  """Mean iterations per Jacobi block of the deep block's inverse."""
  cfg = bundle.config
  deep = model_lib.deep_block(cfg)
  z_tok, grid = tokens.patchify(z, cfg.patch_size)
  b, t, n, d = z_tok.shape
  deep_cond, guidance = inverse.guided_condition(cfg, cond, null_cond, guidance, bundle.null_condition)
  run = jax.jit(
      functools.partial(jacobi_inverse, deep, grid=grid, guidance=guidance, options=options, return_iterations=True))
  _, iterations = run(model_lib.deep_params(bundle.params), z_tok.reshape(b, t * n, d), cond=deep_cond)
  return float(np.mean(np.asarray(iterations))), int(np.asarray(iterations).size)


def bench(name: str, bundle: ModelBundle):
  cfg = bundle.config
  cond, null_cond = condition(bundle, FLAGS.frames)
  n_tokens = (cfg.img_size // cfg.patch_size)**2
  print(f"\n== {name}: deep width {cfg.deep_channels} x {cfg.block_layers[-1]} layers, shallow "
        f"{cfg.channels} x {cfg.block_layers[:-1]}, {n_tokens} tokens/frame, {FLAGS.frames} frames, "
        f"batch {FLAGS.batch}, guidance {FLAGS.guidance}")
  print(f"{'method':28s} {'compile_s':>9s} {'s/frame':>9s} {'iters/block':>11s} {'speedup':>8s}")
  z = jax.random.normal(jax.random.PRNGKey(0), (FLAGS.batch, FLAGS.frames, cfg.img_size, cfg.img_size, cfg.in_channels))
  baseline = None
  rows = []
  for method, jacobi_args in METHODS:
    kind = "fallback" if jacobi_args and jacobi_args[2] else method
    if kind not in FLAGS.rows and method != "sequential":  # sequential: every speedup's baseline
      continue
    jopts = JacobiOptions()
    if jacobi_args:
      jopts = JacobiOptions(block_size=jacobi_args[0], threshold=jacobi_args[1], fallback_after=jacobi_args[2])
    options = SamplingOptions(method=method, guidance=FLAGS.guidance, jacobi=jopts, denoise="none", progress=False)
    sampler = VideoSampler(bundle, options)
    compile_s, seconds = timed(lambda: sampler.sample_latents(z, cond, null_cond), FLAGS.repeats)
    per_frame = seconds / FLAGS.frames
    label = method if not jacobi_args else f"{method} b={jacobi_args[0]} tau={jacobi_args[1]:g}"
    if jacobi_args and jacobi_args[2]:
      label += f" fb={jacobi_args[2]}"
    iters = ""
    if method == "auto":
      iters = ",".join(f"{k}:{v[0]}" for k, v in sampler.plan.items())  # the plan: j(acobi) / s(equential)
    elif jacobi_args:
      mean_iters, blocks = mean_jacobi_iterations(bundle, cond, null_cond, z, jopts, FLAGS.guidance)
      iters = f"{mean_iters:.2f}"
    if baseline is None:
      baseline = per_frame
    speedup = baseline / per_frame
    print(f"{label:28s} {compile_s:9.2f} {per_frame:9.4f} {iters:>11s} {speedup:7.2f}x", flush=True)
    rows.append((label, compile_s, per_frame, iters, speedup))
  return rows


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
  cli.run(main)
