"""Long-video drift of a model trained on the procedural moving shapes: sample every vocabulary
prompt for `multiple` x the training length (the sliding window) and compare, window by window of
T frames, the per-frame agreement with the prompt (object visible, its colour, its axis of motion),
the sharpness (high-frequency energy) and the motion continuity of frames T..M*T with the first T.
Real clips of the same length scored the same way are the reference (they bounce, so their
continuity is below 1 too).

  python -m experiments.eval_long_video --workdir=/tmp/tiny_video [--multiple=6] [--per_prompt=1] \
      [--out=WORKDIR/long_video.json] [--plot=WORKDIR/long_video.png] [--next_frame_context=4]

--next_frame_context=C also asks the model for each frame of real clips given the C real frames
before it, at every phase, and compares its step with the real one (does it bounce where the real
clips do, or where its training clips did?).

Prints a table (each metric per window, and the last window over the first) and writes the JSON
report and a plot of every metric over time.
"""

import os
import warnings

from absl import flags
import jax
import ml_collections
import numpy as np

from data_pipeline import shapes_score
from experiments import cli
from experiments.cli import setup_logging
from experiments.eval_samples import real_clips, shapes_config, shapes_sampler, vocabulary_prompts
from starflow_jax import fileio, media
from starflow_jax.errors import UserError

FLAGS = flags.FLAGS


def define_flags():
  """Registers the flags of this command; called only when it runs as a program, so that
  every module can be imported into one process (tests) without clashing flag names."""
  flags.DEFINE_string("workdir", None, "training workdir (with config.json and model/)")
  flags.DEFINE_integer("multiple", 6, "video length as a multiple of the training length")
  flags.DEFINE_integer("per_prompt", 1, "samples per vocabulary prompt")
  flags.DEFINE_integer("seed", 0, "noise seed")
  flags.DEFINE_string("out", None, "JSON report (default WORKDIR/long_video.json)")
  flags.DEFINE_string("plot", None, "PNG of the metrics over time (default WORKDIR/long_video.png)")
  flags.DEFINE_integer(
      "next_frame_context", 0, "also predict each frame of real clips from the C real frames "
      "before it (every phase of a clip of 2 x the training length), and compare its step "
      "with the real one (0: skip)")


def summarise(videos: np.ndarray, captions: list[str], palette: tuple[str, ...], window: int) -> dict:
  """Per-window means, per-frame means and last-window / first-window ratios of uint8 clips."""
  per_clip = [shapes_score.frame_metrics(v, c, palette) for v, c in zip(videos, captions)]
  windows = shapes_score.windowed(per_clip, window)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # a frame undefined in every clip stays NaN
    per_frame = {
        name: [float(v) for v in np.nanmean(np.stack([c[name] for c in per_clip]), axis=0)]
        for name in shapes_score.FRAME_METRICS
    }
  ratio = {name: (w[-1] / w[0] if w[0] else float("nan")) for name, w in windows.items()}
  return {"clips": len(captions), "windows": windows, "per_frame": per_frame, "last_over_first": ratio}


def long_length(frames: int, multiple: int, temporal_factor: int = 1) -> int:
  """multiple x frames, rounded up to a length the autoencoder decodes (1 + factor * k frames
  for a causal VAE), so the video holds `multiple` whole windows of `frames`."""
  if temporal_factor == 1:
    return multiple * frames
  return 1 + temporal_factor * -(-(multiple * frames - 1) // temporal_factor)


def real_clips_of_length(config: ml_collections.ConfigDict, length: int, count: int):
  """`real_clips` of the workdir's generator with clips of `length` frames."""
  data = ml_collections.ConfigDict(config.to_dict())
  data.data.shapes.update(num_frames=length)
  return real_clips(data, count)


def evaluate(workdir: str,
             multiple: int = 6,
             per_prompt: int = 1,
             seed: int = 0,
             num_prompts: int | None = None) -> dict:
  """The drift report (`summarise` of the samples and of real clips, as JSON-able dict)."""
  if multiple < 2 or per_prompt < 1:
    raise UserError(f"--multiple={multiple} must be >= 2 and --per_prompt={per_prompt} >= 1")
  config = shapes_config(workdir)
  sampler = shapes_sampler(workdir)
  frames = sampler.bundle.sampling_defaults["num_frames"]
  prompts = [p for p in vocabulary_prompts(config.data.shapes) for _ in range(per_prompt)][:num_prompts]
  length = long_length(frames, multiple, int(sampler.autoencoder.temporal_factor))
  videos = media.to_uint8(np.asarray(jax.device_get(sampler.generate(prompts, length, seed=seed))))
  real, captions = real_clips_of_length(config, length, len(prompts))
  palette = tuple(config.data.shapes.colors)
  return {
      "frames": frames,
      "length": length,
      "method": sampler.options.method,
      "guidance": sampler.options.guidance,
      "samples": summarise(videos, prompts, palette, frames),
      "real clips": summarise(real, captions, palette, frames)
  }


def next_frame(workdir: str, context: int, num_clips: int = 48, seed: int = 0) -> list[dict]:
  """Teacher-forced next frames: for every phase s, the model's frame s + C of real clips (twice
  the training length) given their real frames [s, s + C) as the conditioning clip, so always at
  position C of its own clip; `shapes_score.next_step_agreement` per phase. A model that has
  learned the bounces reverses where the real clips do, whatever the phase."""
  config = shapes_config(workdir)
  sampler = shapes_sampler(workdir)
  frames = sampler.bundle.sampling_defaults["num_frames"]
  if int(sampler.autoencoder.temporal_factor) > 1:
    raise UserError("--next_frame_context steps one pixel frame at a time: it needs a model without "
                    "temporal compression (this one's autoencoder groups frames)")
  if not 2 <= context < frames:
    raise UserError(f"--next_frame_context={context} must be in [2, {frames}) (the training length)")
  real, captions = real_clips_of_length(config, 2 * frames, num_clips)
  pixels = media.from_uint8(real)
  rows = []
  for s in range(2 * frames - context):
    video = sampler.generate(captions, context + 1, seed=seed + s, condition_video=pixels[:, s:s + context])
    predicted = media.to_uint8(np.asarray(jax.device_get(video)))[:, context]
    rows.append({"first": s, **shapes_score.next_step_agreement(real, predicted, s + context)})
  return rows


def print_next_frame(rows: list[dict], context: int) -> None:
  print(f"\nnext frame from {context} real frames (position {context} of the model's clip)")
  print(f"{'frames':>10s} {'clips':>5s} {'real rev':>8s} {'model rev':>9s} {'cos bounce':>10s} {'cos other':>9s}")
  for r in rows:
    span = f"{r['first']}..{r['first'] + context - 1}"
    print(f"{span:>10s} {r['clips']:5d} {r['real_reversals']:8.2f} {r['predicted_reversals']:9.2f} "
          f"{r['cosine_at_bounces']:10.2f} {r['cosine_elsewhere']:9.2f}")


def save_plot(path: str, report: dict) -> None:
  import matplotlib  # heavy: only where figures are written
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  names = shapes_score.FRAME_METRICS
  fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 2.8))
  for ax, name in zip(axes, names):
    for label, style in (("samples", "-"), ("real clips", "--")):
      ax.plot(report[label]["per_frame"][name], style, lw=1.2, label=label)
    for k in range(1, report["length"] // report["frames"]):
      ax.axvline(k * report["frames"] - 0.5, color="grey", lw=0.5, alpha=0.5)
    ax.set_title(name, fontsize=9)
    ax.set_xlabel("frame")
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=7)
  fig.suptitle(
      f"{report['length']} frames ({report['length'] // report['frames']}x training), "
      f"windows of {report['frames']}",
      fontsize=9)
  fig.tight_layout()
  fileio.write_file(path, lambda local: fig.savefig(local, dpi=100, format="png"), suffix=".png")
  plt.close(fig)


def print_table(report: dict) -> None:
  windows = report["samples"]["windows"]
  count = len(windows["visible"])
  print(f"\nlong-video drift ({report['length']} frames = {count} x {report['frames']}; "
        f"{report['method']} decoding, guidance {report['guidance']})")
  header = " ".join(f"{f'win {k + 1}':>7s}" for k in range(count))
  print(f"{'metric':11s} {header} {'last/first':>10s} {'real l/f':>9s}")
  for name in shapes_score.FRAME_METRICS:
    row = " ".join(f"{v:7.3f}" for v in windows[name])
    print(f"{name:11s} {row} {report['samples']['last_over_first'][name]:10.3f} "
          f"{report['real clips']['last_over_first'][name]:9.3f}")


def main(argv):
  del argv
  setup_logging()
  rows = None  # first, so a bad --next_frame_context fails before the long videos are made
  if FLAGS.next_frame_context:
    rows = next_frame(FLAGS.workdir, FLAGS.next_frame_context, seed=FLAGS.seed)
  report = evaluate(FLAGS.workdir, FLAGS.multiple, FLAGS.per_prompt, FLAGS.seed)
  print_table(report)
  if rows is not None:
    report["next_frame"] = rows
    print_next_frame(rows, FLAGS.next_frame_context)
  out = FLAGS.out or os.path.join(FLAGS.workdir, "long_video.json")
  plot = FLAGS.plot or os.path.join(FLAGS.workdir, "long_video.png")
  fileio.write_json(out, report, overwrite=True)
  save_plot(plot, report)
  print(f"wrote {out} and {plot}")


if __name__ == "__main__":
  define_flags()
  flags.mark_flag_as_required("workdir")
  cli.run(main)
