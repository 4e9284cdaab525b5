"""Anomaly detection with exact per-frame likelihoods, on procedural anomalies of moving shapes.

  python -m experiments.eval_anomaly --workdir=demo_output/run [--num_clips=48] [--out=anomaly.json]

For a model trained on moving shapes (its workdir's config.json names the data), held-out clips
get one anomaly each (`data_pipeline.anomalies`: teleport, color, border_pass, freeze, reverse);
every clip, normal or not, is scored frame by frame under its caption (`experiments.score`).
Scores compared (higher = more anomalous):
  frame_surprise  max over frames t >= 1 of (nll_t - mu_t) / sd_t, with mu_t, sd_t the mean and
                  spread of frame t's conditional NLL -log p(x_t | x_<t) over a separate set of
                  normal calibration clips; its argmax is the localised frame
  token_surprise  max over frames t >= 1 and token positions n of (nll_tn - mu_tn) / sd_tn, the
                  same baseline per token position: an anomaly confined to a few tokens (an
                  object appearing where it cannot be) is not diluted by the frame's others
  complexity      the same as frame_surprise with each frame's NLL less its PNG-compressed
                  length in nats (the input-complexity correction of Serra et al. 2020)
  clip_nll        the clip's total NLL (the raw likelihood, for comparison)
Reports ROC-AUC per anomaly kind (anomalous clips against normal clips of other indices) and
localisation accuracy (argmax frame = onset, and within one frame).
"""

from __future__ import annotations

import io
import json
import os

from absl import app, flags
import ml_collections
import numpy as np
from PIL import Image

from data_pipeline import anomalies, sources
from experiments import cli
from experiments.sample import model_directory
from experiments.score import FrameScorer
from starflow_jax import checkpoint, fileio, media
from starflow_jax.errors import UserError

FLAGS = flags.FLAGS
SCORES = ("frame_surprise", "token_surprise", "complexity", "clip_nll")


def define_flags():
  """Registers the flags of this command; called only when it runs as a program."""
  flags.DEFINE_string("workdir", None, "training workdir of a moving-shapes model (config.json + model/)")
  flags.DEFINE_integer("num_clips", 48, "anomalous clips per kind (and normal clips to compare with)")
  flags.DEFINE_integer("calibration_clips", 48, "normal clips that set each frame's NLL baseline")
  flags.DEFINE_integer("noise_samples", 1, "noise draws per clip (experiments.score)")
  flags.DEFINE_string("out", None, "JSON report (default WORKDIR/anomaly.json)")
  flags.mark_flag_as_required("workdir")


def roc_auc(positives: np.ndarray, negatives: np.ndarray) -> float:
  """P(score of a positive > score of a negative), ties counted half (Mann-Whitney)."""
  pos, neg = np.asarray(positives, np.float64)[:, None], np.asarray(negatives, np.float64)[None, :]
  return float(np.mean((pos > neg) + 0.5 * (pos == neg)))


def png_nats(frame: np.ndarray) -> float:
  """The PNG-compressed length of a uint8 frame, in nats (a generic compressor's complexity)."""
  buffer = io.BytesIO()
  Image.fromarray(frame).save(buffer, format="PNG", optimize=True)
  return 8 * len(buffer.getvalue()) * np.log(2.0)


class ClipScores:
  """Per-frame NLLs (and complexities) of clips, with the normal baseline per frame."""

  def __init__(self, scorer: FrameScorer, noise_samples: int, temporal_factor: int):
    self.scorer, self.noise_samples, self.temporal_factor = scorer, noise_samples, temporal_factor

  def frames(self, clip: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(NLL per latent frame [T'], PNG nats per latent frame [T'], NLL per token [T', N])."""
    pixels = media.from_uint8(clip["video"])[None]
    report = self.scorer.score(pixels, clip["caption"], self.noise_samples)
    nll = np.array([f["nll_nats"] for f in report["frames"]])
    token_nll = np.asarray(report["token_nll"]).reshape(len(nll), -1)
    complexity = np.array([png_nats(f) for f in clip["video"]])
    if self.temporal_factor > 1:  # latent frame 0 = pixel frame 0, then groups of temporal_factor
      rest = complexity[1:].reshape(-1, self.temporal_factor).sum(axis=1)
      complexity = np.concatenate([complexity[:1], rest])
    return nll, complexity, token_nll


def _mean_and_spread(rows: list) -> tuple[np.ndarray, np.ndarray]:
  """Per-frame mean and standard deviation (kept off zero) of calibration rows [T']."""
  stacked = np.stack(rows)
  return stacked.mean(axis=0), stacked.std(axis=0) + 1e-6


def evaluate(workdir: str,
             num_clips: int,
             calibration_clips: int,
             noise_samples: int = 1,
             kinds: tuple[str, ...] = anomalies.KINDS) -> dict:
  config = ml_collections.ConfigDict(fileio.read_json(fileio.as_path(workdir) / "config.json"))
  if config.data.source not in ("shapes", "latents"):  # latents: pre-encoded from the shapes
    raise UserError(f"{workdir} was trained on data.source={config.data.source!r}; anomalies are "
                    "generated on moving shapes (data.source='shapes', or latents pre-encoded from them)")
  bundle = checkpoint.load_bundle(model_directory(workdir))
  scorer = FrameScorer(bundle)
  factor = int(scorer.sampler.autoencoder.temporal_factor)
  clips = ClipScores(scorer, noise_samples, factor)
  generator = anomalies.AnomalousShapes(sources.shapes_config(config.data, "eval"))
  calibration = [clips.frames(generator.normal(10_000 + i)) for i in range(calibration_clips)]
  nll_mu, nll_sd = _mean_and_spread([c[0] for c in calibration])
  adjusted_mu, adjusted_sd = _mean_and_spread([c[0] - c[1] for c in calibration])
  token_mu, token_sd = _mean_and_spread([c[2] for c in calibration])

  def scores(nll, complexity, token_nll):
    surprise = (nll - nll_mu) / nll_sd
    complex_surprise = (nll - complexity - adjusted_mu) / adjusted_sd
    return {
        "frame_surprise": float(np.max(surprise[1:])),
        "token_surprise": float(np.max(((token_nll - token_mu) / token_sd)[1:])),
        "complexity": float(np.max(complex_surprise[1:])),
        "clip_nll": float(np.sum(nll)),
        "argmax": int(np.argmax(surprise[1:]) + 1)
    }

  normal = [scores(*clips.frames(generator.normal(20_000 + i))) for i in range(num_clips)]
  report = {"num_clips": num_clips, "calibration_clips": calibration_clips, "kinds": {}}
  for kind in kinds:
    rows, hits, near = [], 0, 0
    for i in range(num_clips):
      try:
        clip = generator[kind, i]
      except ValueError as e:  # clips too short for this kind
        raise UserError(str(e)) from None
      row = scores(*clips.frames(clip))
      onset = clip["onset"] if factor == 1 else (clip["onset"] - 1) // factor + 1  # its latent frame
      hits += row["argmax"] == onset
      near += abs(row["argmax"] - onset) <= 1
      rows.append(row)
    report["kinds"][kind] = {
        **{
            name: roc_auc([r[name] for r in rows], [r[name] for r in normal]) for name in SCORES
        },
        "localised": hits / num_clips,
        "localised_within_1": near / num_clips,
    }
  return report


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cli.setup_logging()
  report = evaluate(FLAGS.workdir, FLAGS.num_clips, FLAGS.calibration_clips, FLAGS.noise_samples)
  out = FLAGS.out or os.path.join(FLAGS.workdir, "anomaly.json")
  fileio.write_json(out, report, overwrite=True)
  print(f"{'kind':12s}" + "".join(f" {'AUC ' + name:>19s}" for name in SCORES) + f" {'localised':>10s}")
  for kind, row in report["kinds"].items():
    print(f"{kind:12s}" + "".join(f" {row[name]:19.3f}" for name in SCORES) + f" {row['localised']:10.2f}")
  print(f"wrote {out}")
  print(json.dumps(report["kinds"]))


if __name__ == "__main__":
  define_flags()
  cli.run(main)
