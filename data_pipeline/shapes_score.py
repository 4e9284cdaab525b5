"""Score generated moving-shapes clips against their captions: is the object the named colour, and
does it move the named way? A cheap, deterministic prompt-adherence measure for the procedural
dataset (the same scorer on real clips gives its ceiling).

Foreground = pixels whose brightest channel exceeds `threshold` (the background is black). The
clip's colour is the palette colour nearest to the mean foreground RGB; its direction is the
compass direction nearest to the displacement of the foreground centroid over the first
`direction_frames` frames (objects bounce off the borders, so later frames can reverse).
"""

from __future__ import annotations

import numpy as np

from data_pipeline.shapes import COLORS, DIRECTIONS


def parse_caption(caption: str) -> tuple[str, str, str]:
  """'a red circle moving left' -> ('red', 'circle', 'left'). Single-object captions only."""
  words = caption.split()
  if len(words) != 5 or words[0] != "a" or words[3] != "moving" or " and " in caption:
    raise ValueError(f"expected a single-object caption 'a COLOUR SHAPE moving DIRECTION', got {caption!r}")
  return words[1], words[2], words[4]


def clip_colour(video: np.ndarray, palette: tuple[str, ...], threshold: int = 80) -> str | None:
  """The palette colour nearest to the mean foreground RGB of uint8 [T, H, W, 3]; None if empty."""
  pixels = video.reshape(-1, 3).astype(np.float32)
  fg = pixels[pixels.max(axis=1) > threshold]
  if len(fg) == 0:
    return None
  mean = fg.mean(axis=0)
  return min(palette, key=lambda name: float(np.sum(np.square(mean - np.array(COLORS[name], np.float32)))))


def clip_direction(video: np.ndarray, threshold: int = 80, direction_frames: int = 3) -> str | None:
  """The compass direction nearest to the centroid displacement over the first frames."""
  centroids = [foreground_centroid(frame, threshold) for frame in video[:direction_frames]]
  if len(centroids) < 2 or any(c is None for c in centroids):
    return None
  step = centroids[-1] - centroids[0]
  if np.abs(step).max() < 0.25:  # no visible motion
    return None
  return max(DIRECTIONS, key=lambda name: float(np.dot(step, DIRECTIONS[name])))


def foreground_centroid(frame: np.ndarray, threshold: int = 80) -> np.ndarray | None:
  """(row, col) mean of a uint8 frame's [H, W, 3] foreground pixels; None if it has none."""
  rows, cols = np.nonzero(frame.max(axis=-1) > threshold)
  return np.array([rows.mean(), cols.mean()]) if len(rows) else None


def score_clips(videos: np.ndarray, captions: list[str], palette: tuple[str, ...], threshold: int = 80) -> dict:
  """Colour and direction accuracy of uint8 clips [N, T, H, W, 3] against their captions."""
  if len(videos) != len(captions):
    raise ValueError(f"{len(videos)} clips but {len(captions)} captions")
  colour_hits = direction_hits = visible = 0
  for video, caption in zip(videos, captions):
    colour, _, direction = parse_caption(caption)
    found = clip_colour(video, palette, threshold)
    visible += found is not None
    colour_hits += found == colour
    direction_hits += clip_direction(video, threshold) == direction
  n = max(1, len(captions))
  return {
      "clips": len(captions),
      "visible": visible / n,
      "colour_accuracy": colour_hits / n,
      "direction_accuracy": direction_hits / n,
      "colour_chance": 1.0 / len(palette),
      "direction_chance": 1.0 / len(DIRECTIONS)
  }


# ---------------------------------------------------------------------- per-frame (long videos)
FRAME_METRICS = ("visible", "colour", "axis", "sharpness", "continuity")


def frame_metrics(video: np.ndarray, caption: str, palette: tuple[str, ...], threshold: int = 80) -> dict:
  """Per-frame agreement of one uint8 clip [T, H, W, 3] with its caption, each [T] float:

  visible     1 where the frame has foreground;
  colour      1 where the frame's foreground is nearest the caption's colour;
  axis        1 where the centroid moved (>= 0.25 px) along the caption's axis (horizontal for
              left / right): bounces reverse the direction, never the axis;
  sharpness   the high-frequency energy, mean squared Laplacian of the luminance in [0, 1];
  continuity  max(0, cosine) of this frame's centroid step and the previous one (1: a steady
              glide, 0: a jump sideways or a stall; a bounce counts 0, as in the real clips).
  Frames where a metric is undefined (nothing visible, no step yet) are NaN."""
  colour_name, _, direction = parse_caption(caption)
  want_axis = int(DIRECTIONS[direction][0] == 0)  # 0: rows (up / down), 1: columns
  t = len(video)
  out = {name: np.full(t, np.nan, np.float64) for name in FRAME_METRICS}
  centroids = np.full((t, 2), np.nan)
  for i, frame in enumerate(video):
    centroid = foreground_centroid(frame, threshold)
    out["visible"][i] = float(centroid is not None)
    out["sharpness"][i] = _laplacian_energy(frame)
    if centroid is not None:
      out["colour"][i] = float(clip_colour(frame[None], palette, threshold) == colour_name)
      centroids[i] = centroid
  steps = np.diff(centroids, axis=0)  # [T-1, 2]; NaN where either frame is empty
  for i, step in enumerate(steps, start=1):
    if np.isnan(step).any():
      continue
    moved = np.abs(step).max() >= 0.25
    out["axis"][i] = float(moved and int(np.argmax(np.abs(step))) == want_axis)
    before = steps[i - 2] if i >= 2 else None
    if before is not None and not np.isnan(before).any():
      norms = np.linalg.norm(step) * np.linalg.norm(before)
      out["continuity"][i] = max(0.0, float(np.dot(step, before) / norms)) if norms > 0 else 0.0
  return out


def _laplacian_energy(frame: np.ndarray) -> float:
  luma = frame.astype(np.float64).mean(axis=-1) / 255.0  # [H, W]
  lap = (-4 * luma[1:-1, 1:-1] + luma[:-2, 1:-1] + luma[2:, 1:-1] + luma[1:-1, :-2] + luma[1:-1, 2:])
  return float(np.mean(np.square(lap)))


def windowed(per_clip: list[dict], window: int) -> dict:
  """Per-frame metrics of many clips -> {metric: [mean over clips and the frames of window k]}
  for windows [kT, (k+1)T) (NaN frames left out)."""
  length = len(per_clip[0]["visible"])
  out = {}
  for name in FRAME_METRICS:
    values = np.stack([clip[name] for clip in per_clip])  # [N, T]
    out[name] = [
        float(np.nanmean(values[:, k:k + window])) if np.isfinite(values[:, k:k + window]).any() else float("nan")
        for k in range(0, length - window + 1, window)
    ]
  return out


def next_step_agreement(real: np.ndarray, predicted: np.ndarray, frame: int, threshold: int = 80) -> dict:
  """How a model's frame `frame`, predicted from the real frames before it, moves the object,
  against the real clips: real uint8 [N, T, H, W, 3] (T > frame >= 2), predicted uint8
  [N, H, W, 3]. Steps are centroid displacements from the real frame frame - 1; a step
  "reverses" where it points against the real step before it (a bounce). Returns the clips
  scored, the share of real and of predicted steps that reverse, and the mean cosine of the
  predicted step with the real one where the real step reverses and where it does not (NaN where
  there is no such clip)."""
  rows = []
  for clip, guess in zip(real, predicted):
    c = [foreground_centroid(f, threshold) for f in (clip[frame - 2], clip[frame - 1], clip[frame], guess)]
    if any(x is None for x in c):
      continue
    before, step, got = c[1] - c[0], c[2] - c[1], c[3] - c[1]
    cosine = float(np.dot(step, got) / max(np.linalg.norm(step) * np.linalg.norm(got), 1e-9))
    rows.append((float(np.dot(before, step)) < 0, float(np.dot(before, got)) < 0, cosine))
  bounce = np.array([r[0] for r in rows], bool)
  cosine = np.array([r[2] for r in rows])
  mean = lambda v: float(v.mean()) if len(v) else float("nan")
  return {
      "clips": len(rows),
      "real_reversals": mean(bounce.astype(float)),
      "predicted_reversals": mean(np.array([r[1] for r in rows], float)),
      "cosine_at_bounces": mean(cosine[bounce]),
      "cosine_elsewhere": mean(cosine[~bounce]),
  }
