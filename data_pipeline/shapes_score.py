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
  centroids = []
  for frame in video[:direction_frames]:
    mask = frame.max(axis=-1) > threshold
    if not mask.any():
      return None
    rows, cols = np.nonzero(mask)
    centroids.append((rows.mean(), cols.mean()))
  if len(centroids) < 2:
    return None
  step = np.array(centroids[-1]) - np.array(centroids[0])
  if np.abs(step).max() < 0.25:  # no visible motion
    return None
  return max(DIRECTIONS, key=lambda name: float(np.dot(step, DIRECTIONS[name])))


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
