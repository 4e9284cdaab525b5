"""Anomaly detection with exact per-frame likelihoods, on procedural anomalies of moving shapes.

  python -m experiments.eval_anomaly --workdir=demo_output/workdir [--num_clips=200] [--noise_samples=8] \
      [--offset=0] [--out=anomaly.json]

For a model trained on moving shapes (its workdir's config.json names the data), held-out clips
get one anomaly each (`data_pipeline.anomalies`: teleport, color, border_pass, freeze, reverse);
every clip, normal or not, is scored frame by frame under its caption (`experiments.score`).
Scores compared (higher = more anomalous), every one against normal calibration clips:
  relative_surprise  the headline score. Frame t's conditional NLL less the clip's own median
                  over its conditional frames t >= 1 (and each token's NLL less its position's
                  median over those frames), standardised per frame (and token position) by the
                  calibration clips; the largest frame value and the largest token value, each
                  standardised by the calibration clips' own largest values, summed. What the
                  clip's content costs in every frame cancels; what is left is the change
                  between frames
  frame_surprise  max over frames t >= 1 of (nll_t - mu_t) / sd_t, with mu_t, sd_t the mean and
                  spread of frame t's conditional NLL -log p(x_t | x_<t) over the calibration
                  clips; its argmax is the localised frame (the relative one's would be pulled by
                  the anomalous frames inside the clip's median)
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
SCORES = ("relative_surprise", "frame_surprise", "token_surprise", "complexity", "clip_nll")
RELATIVE_PARTS = ("relative_frame", "relative_token", "relative_complexity")  # relative_surprise sums their peaks


def define_flags():
  """Registers the flags of this command; called only when it runs as a program."""
  flags.DEFINE_string("workdir", None, "training workdir of a moving-shapes model (config.json + model/)")
  flags.DEFINE_integer("num_clips", 200, "anomalous clips per kind (and normal clips to compare with)")
  flags.DEFINE_integer("calibration_clips", 200, "normal clips that set each frame's NLL baseline")
  flags.DEFINE_integer("noise_samples", 8, "noise draws per clip (experiments.score)")
  flags.DEFINE_integer(
      "offset", 0, "first clip index of every set (another offset: other clips, "
      "e.g. to check a score chosen on the default ones)")
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


def components(nll: np.ndarray, complexity: np.ndarray, token_nll: np.ndarray) -> dict:
  """The per-frame [T'] and per-token [T', N] quantities the scores standardise. The relative
  ones are frames t >= 1 less the clip's own median conditional frame (per token position for
  tokens; of NLL less PNG nats for complexity): what the clip's content costs in every frame
  (object size, shape, colour) cancels."""
  return {
      "frame": nll,
      "token": token_nll,
      "complexity": nll - complexity,
      "relative_frame": relative_to_clip(nll),
      "relative_token": relative_to_clip(token_nll),
      "relative_complexity": relative_to_clip(nll - complexity),
  }


def relative_to_clip(values: np.ndarray) -> np.ndarray:
  """values [T', ...] of frames t >= 1 less their median over those frames (frame 0: 0)."""
  relative = np.zeros_like(values)
  relative[1:] = values[1:] - np.median(values[1:], axis=0)
  return relative


class Baseline:
  """What normal clips look like: the mean and spread of every component at each frame (and token
  position) over calibration clips, then of the clip-level maxima of the standardised ones."""

  def __init__(self, calibration: list[dict]):
    stacked = {name: np.stack([c[name] for c in calibration]) for name in calibration[0]}
    self.mu = {name: v.mean(axis=0) for name, v in stacked.items()}
    self.sd = {name: v.std(axis=0) + 1e-6 for name, v in stacked.items()}
    peaks = [self.peaks(c) for c in calibration]
    self.peak_mu = {name: np.mean([p[name] for p in peaks]) for name in peaks[0]}
    self.peak_sd = {name: np.std([p[name] for p in peaks]) + 1e-6 for name in peaks[0]}

  def standardised(self, parts: dict, name: str) -> np.ndarray:
    return (parts[name] - self.mu[name]) / self.sd[name]

  def peaks(self, parts: dict) -> dict:
    """Largest standardised value over frames t >= 1 (and token positions) of each component."""
    return {name: float(np.max(self.standardised(parts, name)[1:])) for name in parts}

  def scores(self, parts: dict) -> dict:
    peak = self.peaks(parts)
    relative = sum((peak[n] - self.peak_mu[n]) / self.peak_sd[n] for n in RELATIVE_PARTS)
    return {
        "relative_surprise": float(relative),
        "frame_surprise": peak["frame"],
        "token_surprise": peak["token"],
        "complexity": peak["complexity"],
        "clip_nll": float(np.sum(parts["frame"])),
        "argmax": int(np.argmax(self.standardised(parts, "frame")[1:]) + 1)
    }


def evaluate(workdir: str,
             num_clips: int,
             calibration_clips: int,
             noise_samples: int = 8,
             kinds: tuple[str, ...] = anomalies.KINDS,
             offset: int = 0) -> dict:
  """The report: AUC of every score per kind, and localisation. Clip indices (of the eval split):
  anomalies from `offset`, calibration clips from 10,000 + offset, normal clips from 20,000 +
  offset, so the three sets never share a clip."""
  clips_per_set = max(num_clips, calibration_clips)
  if offset < 0 or offset + clips_per_set > 10_000:
    raise UserError(f"--offset={offset} with {clips_per_set} clips leaves the anomalies' index range and "
                    "overlaps the other sets; use 0 <= offset <= 10000 - clips")
  config = ml_collections.ConfigDict(fileio.read_json(fileio.as_path(workdir) / "config.json"))
  if config.data.source not in ("shapes", "latents"):  # latents: pre-encoded from the shapes
    raise UserError(f"{workdir} was trained on data.source={config.data.source!r}; anomalies are "
                    "generated on moving shapes (data.source='shapes', or latents pre-encoded from them)")
  bundle = checkpoint.load_bundle(model_directory(workdir))
  scorer = FrameScorer(bundle)
  factor = int(scorer.sampler.autoencoder.temporal_factor)
  clips = ClipScores(scorer, noise_samples, factor)
  generator = anomalies.AnomalousShapes(sources.shapes_config(config.data, "eval"))
  baseline = Baseline(
      [components(*clips.frames(generator.normal(10_000 + offset + i))) for i in range(calibration_clips)])
  scores = lambda clip: baseline.scores(components(*clips.frames(clip)))
  normal = [scores(generator.normal(20_000 + offset + i)) for i in range(num_clips)]
  report = {"num_clips": num_clips, "calibration_clips": calibration_clips, "offset": offset, "kinds": {}}
  for kind in kinds:
    rows, hits, near = [], 0, 0
    for i in range(num_clips):
      try:
        clip = generator[kind, offset + i]
      except ValueError as e:  # clips too short for this kind
        raise UserError(str(e)) from None
      row = scores(clip)
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
  report = evaluate(FLAGS.workdir, FLAGS.num_clips, FLAGS.calibration_clips, FLAGS.noise_samples, offset=FLAGS.offset)
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
