"""Prompt adherence of a model trained on the procedural moving shapes: sample every
colour x shape x direction prompt of its vocabulary and score the clips (data_pipeline/shapes_score).

  python -m experiments.eval_samples --workdir=/tmp/tiny_video [--per_prompt=2] [--seed=0]

Prints colour and direction accuracy of the samples, the same scores of real held-out clips (the
scorer's ceiling) and chance, and writes WORKDIR/sample_scores.json (or --out).
"""

import itertools
import json
import os

from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from data_pipeline import shapes_score, sources
from data_pipeline.shapes import DIRECTIONS
from experiments import cli
from experiments.cli import setup_logging
from starflow_jax import checkpoint, fileio, media
from starflow_jax.errors import UserError
from starflow_jax.sampling import VideoSampler, options_from_defaults
from data_pipeline.pixels import pixels_to_unit

FLAGS = flags.FLAGS


def define_flags():
  """Registers the flags of this command; called only when it runs as a program, so that
  every module can be imported into one process (tests) without clashing flag names."""
  flags.DEFINE_string("workdir", None, "training workdir (with config.json and model/)")
  flags.DEFINE_integer("per_prompt", 2, "samples per prompt")
  flags.DEFINE_integer("seed", 0, "noise seed")
  flags.DEFINE_string("out", None, "JSON report (default WORKDIR/sample_scores.json)")
  flags.DEFINE_float("guidance", None, "classifier-free guidance (default: the model directory's)")


def vocabulary_prompts(shapes_config) -> list[str]:
  return [
      f"a {colour} {shape} moving {direction}"
      for colour, shape, direction in itertools.product(shapes_config.colors, shapes_config.shapes, DIRECTIONS)
  ]


def real_clips(config: ml_collections.ConfigDict, count: int) -> tuple[np.ndarray, list[str]]:
  """Held-out single-object clips (uint8) of the training source and their captions."""
  data = ml_collections.ConfigDict(config.data.to_dict())
  data.source = "shapes"  # also for models trained from latents pre-encoded from the shapes
  source = sources.build_source(data, "eval")
  videos, captions = [], []
  for i in range(len(source)):
    example = source[i]
    if int(example.get("num_objects", 1)) == 1:
      videos.append(example["video"])
      captions.append(str(example["caption"]))
    if len(videos) == count:
      break
  return np.stack(videos), captions


def shapes_config(workdir: str) -> ml_collections.ConfigDict:
  """The training config of a moving-shapes model's workdir (the scorers need that data)."""
  with open(os.path.join(workdir, "config.json")) as f:
    config = ml_collections.ConfigDict(json.load(f))
  if config.data.source not in ("shapes", "latents"):
    raise UserError(f"{workdir} was trained on data.source={config.data.source!r}; this scorer "
                    "needs the procedural moving shapes (or latents pre-encoded from them)")
  return config


def shapes_sampler(workdir: str, guidance: float | None = None) -> VideoSampler:
  """A sampler of WORKDIR/model with the model directory's options (`guidance` over them)."""
  if guidance is not None and guidance < 0:
    raise UserError(f"--guidance={guidance} must be >= 0 (0: no guidance)")
  bundle = checkpoint.load_bundle(os.path.join(workdir, "model"))
  return VideoSampler(bundle, options_from_defaults(bundle.sampling_defaults, progress=False, guidance=guidance))


def evaluate(workdir: str,
             per_prompt: int = 2,
             seed: int = 0,
             guidance: float | None = None,
             sampler: VideoSampler | None = None) -> dict:
  """Adherence of `sampler` (default: `shapes_sampler(workdir, guidance)`) to every prompt."""
  config = shapes_config(workdir)
  sampler = sampler or shapes_sampler(workdir, guidance)
  frames = sampler.bundle.sampling_defaults["num_frames"]
  prompts = [p for p in vocabulary_prompts(config.data.shapes) for _ in range(per_prompt)]
  videos = media.to_uint8(np.asarray(jax.device_get(sampler.generate(prompts, frames, seed=seed))))
  palette = tuple(config.data.shapes.colors)
  report = {"samples": shapes_score.score_clips(videos, prompts, palette)}
  real, captions = real_clips(config, len(prompts))
  report["real clips"] = shapes_score.score_clips(real, captions, palette)  # the scorer's ceiling
  if config.autoencoder.kind != "identity":  # the ceiling of a latent-space model
    unit = pixels_to_unit(jnp.asarray(real), None)
    decoded = sampler.autoencoder.decode(sampler.autoencoder.encode(unit))
    report["autoencoded"] = shapes_score.score_clips(media.to_uint8(np.asarray(decoded)), captions, palette)
  report.update(method=sampler.options.method, guidance=sampler.options.guidance, frames=frames)
  return report


def main(argv):
  del argv
  setup_logging()
  report = evaluate(FLAGS.workdir, FLAGS.per_prompt, FLAGS.seed, FLAGS.guidance)
  print(f"\nprompt adherence ({report['method']} decoding, guidance {report['guidance']}, "
        f"{report['frames']} frames)")
  print(f"{'':12s} {'clips':>6s} {'visible':>8s} {'colour':>8s} {'direction':>10s}")
  for name in ("samples", "real clips", "autoencoded"):
    if name not in report:
      continue
    r = report[name]
    print(f"{name:12s} {r['clips']:6d} {r['visible']:8.2f} {r['colour_accuracy']:8.2f} "
          f"{r['direction_accuracy']:10.2f}")
  r = report["samples"]
  print(f"{'chance':12s} {'':6s} {'':8s} {r['colour_chance']:8.2f} {r['direction_chance']:10.2f}")
  out = FLAGS.out or os.path.join(FLAGS.workdir, "sample_scores.json")
  fileio.write_json(out, report, overwrite=True)
  print("wrote", out)


if __name__ == "__main__":
  define_flags()
  flags.mark_flag_as_required("workdir")
  cli.run(main)
