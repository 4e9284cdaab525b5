"""A procedural captioned video dataset: coloured shapes moving and bouncing, no download needed.

Each clip holds 1..max_objects shapes (square, circle, triangle, ...) in named colours on a black
background, each moving with a constant velocity along one of four directions and bouncing off
the borders. The caption is generated from the attributes ("a red circle moving left and a blue
square moving down"), and the per-clip ground truth (shapes, colours, sizes, velocities and the
trajectory of every object's centre) is returned with the pixels, so generated videos can be
scored later. Clip `i` depends only on (seed, i): the source is random access and deterministic.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from starflow_jax.errors import UserError

COLORS = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
    "magenta": (220, 50, 220),
    "cyan": (40, 220, 230),
    "white": (245, 245, 245),
    "orange": (250, 140, 20),
}
SHAPES = ("square", "circle", "triangle", "diamond")
DIRECTIONS = {"left": (0.0, -1.0), "right": (0.0, 1.0), "up": (-1.0, 0.0), "down": (1.0, 0.0)}


@dataclasses.dataclass(frozen=True)
class ShapesConfig:
  """Static description of the procedural dataset (all sizes in pixels)."""

  num_frames: int = 8
  height: int = 16
  width: int = 16
  min_objects: int = 1
  max_objects: int = 2
  shapes: tuple[str, ...] = ("square", "circle", "triangle")
  colors: tuple[str, ...] = ("red", "green", "blue", "yellow", "magenta", "cyan")
  min_radius: float = 0.15  # object half-size as a fraction of the shorter side
  max_radius: float = 0.22
  min_speed: float = 0.04  # pixels per frame as a fraction of the shorter side
  max_speed: float = 0.10
  # Frames of free motion before any bounce (None: half the clip), so the caption's direction is
  # what one sees first; fewer spread the bounces over more frames of the clip.
  free_frames: int | None = None
  num_examples: int = 100_000  # length of the (virtual) source
  seed: int = 0

  def validate(self) -> "ShapesConfig":

    def fail(msg):
      raise UserError(f"invalid shapes dataset config: {msg}")

    if self.num_frames < 1 or self.height < 4 or self.width < 4:
      fail(f"need num_frames >= 1 and frames of at least 4x4 pixels, got {self.num_frames} frames "
           f"of {self.height}x{self.width}")
    if not 1 <= self.min_objects <= self.max_objects <= 3:
      fail(f"need 1 <= min_objects <= max_objects <= 3, got {self.min_objects}, {self.max_objects}")
    unknown = [s for s in self.shapes if s not in SHAPES]
    if unknown or not self.shapes:
      fail(f"unknown shapes {unknown}; choose from {SHAPES}")
    unknown = [c for c in self.colors if c not in COLORS]
    if unknown or not self.colors:
      fail(f"unknown colours {unknown}; choose from {sorted(COLORS)}")
    if not 0 < self.min_radius <= self.max_radius < 0.5:
      fail("need 0 < min_radius <= max_radius < 0.5 (fractions of the frame side)")
    if self.free_frames is not None and not 1 <= self.free_frames < self.num_frames:
      fail(f"free_frames={self.free_frames} must be in [1, num_frames) (or None: half the clip)")
    if self.num_examples <= 0:
      fail(f"num_examples={self.num_examples} must be positive")
    return self

  @property
  def vocabulary(self) -> list[str]:
    """Every word a caption can contain."""
    return ["a", "and", "moving"] + list(self.colors) + list(self.shapes) + list(DIRECTIONS)


def _bounce(start: np.ndarray, velocity: np.ndarray, low: np.ndarray, high: np.ndarray, num_frames: int) -> np.ndarray:
  """Positions [T, 2] of a point moving at constant velocity, reflected at low/high."""
  t = np.arange(num_frames, dtype=np.float64)[:, None]
  span = np.maximum(high - low, 1e-9)
  u = np.mod(start - low + velocity * t, 2 * span)
  return low + np.where(u <= span, u, 2 * span - u)


def shape_mask(shape: str, center: np.ndarray, radius: float, height: int, width: int) -> np.ndarray:
  """Boolean [H, W] mask of a shape centred at `center` (row, col) with half-size `radius`."""
  rows, cols = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
  dy, dx = rows - center[0], cols - center[1]
  if shape == "square":
    return (np.abs(dy) <= radius) & (np.abs(dx) <= radius)
  if shape == "circle":
    return dy * dy + dx * dx <= radius * radius
  if shape == "triangle":  # pointing up, base at the bottom
    return (dy >= -radius) & (dy <= radius) & (np.abs(dx) <= (dy + radius) / 2)
  if shape == "diamond":
    return np.abs(dx) + np.abs(dy) <= radius
  raise ValueError(f"unknown shape {shape!r}")


def caption_of(objects: list[dict]) -> str:
  return " and ".join(f"a {o['color']} {o['shape']} moving {o['direction']}" for o in objects)


class MovingShapesSource:
  """grain random-access source: `len()` clips; `source[i]` is a dict

    video: uint8 [T, H, W, 3]; caption: str; num_objects: int;
    shape_ids, color_ids, direction_ids: int32 [max_objects] (-1 for absent objects);
    radii: float32 [max_objects]; positions: float32 [max_objects, T, 2] (row, col of the centre);
    velocities: float32 [max_objects, 2] (pixels per frame, before bouncing).
  """

  def __init__(self, config: ShapesConfig = ShapesConfig()):
    self.config = config.validate()

  def __len__(self) -> int:
    return self.config.num_examples

  def __repr__(self) -> str:
    return f"MovingShapesSource({self.config})"

  def describe(self, index: int) -> list[dict]:
    """The objects of clip `index`: attributes and trajectories, deterministic in (seed, index)."""
    c = self.config
    if not 0 <= index < len(self):
      raise IndexError(f"index {index} out of range for a source of {len(self)} clips")
    rng = np.random.default_rng([c.seed, index])
    side = min(c.height, c.width)
    num = int(rng.integers(c.min_objects, c.max_objects + 1))
    objects = []
    for _ in range(num):
      radius = float(rng.uniform(c.min_radius, c.max_radius) * side)
      low = np.array([radius, radius])
      high = np.array([c.height - radius, c.width - radius])
      direction = str(rng.choice(list(DIRECTIONS)))
      speed = float(rng.uniform(c.min_speed, c.max_speed) * side)
      velocity = np.array(DIRECTIONS[direction]) * speed
      # Leave room to move freely for the first free_frames, so the caption's direction is what
      # one sees first; bounces come later.
      free = c.num_frames // 2 if c.free_frames is None else c.free_frames
      travel = np.abs(velocity) * free
      start_low = np.where(velocity < 0, np.minimum(low + travel, high), low)
      start_high = np.where(velocity > 0, np.maximum(high - travel, low), high)
      start = rng.uniform(start_low, start_high)
      objects.append(
          dict(shape=str(rng.choice(c.shapes)),
               color=str(rng.choice(c.colors)),
               direction=direction,
               radius=radius,
               velocity=velocity,
               positions=_bounce(start, velocity, low, high, c.num_frames)))
    return objects

  def render(self, objects: list[dict]) -> np.ndarray:
    c = self.config
    video = np.zeros((c.num_frames, c.height, c.width, 3), np.uint8)
    for obj in objects:  # later objects are drawn on top
      color = np.array(COLORS[obj["color"]], np.uint8)
      for t in range(c.num_frames):
        mask = shape_mask(obj["shape"], obj["positions"][t], obj["radius"], c.height, c.width)
        video[t][mask] = color
    return video

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    c = self.config
    objects = self.describe(index)
    k = c.max_objects
    pad = lambda values, fill, dtype: np.array(values + [fill] * (k - len(values)), dtype)
    positions = np.zeros((k, c.num_frames, 2), np.float32)
    velocities = np.zeros((k, 2), np.float32)
    for i, obj in enumerate(objects):
      positions[i] = obj["positions"]
      velocities[i] = obj["velocity"]
    return {
        "video": self.render(objects),
        "caption": caption_of(objects),
        "num_objects": np.int32(len(objects)),
        "shape_ids": pad([SHAPES.index(o["shape"]) for o in objects], -1, np.int32),
        "color_ids": pad([sorted(COLORS).index(o["color"]) for o in objects], -1, np.int32),
        "direction_ids": pad([list(DIRECTIONS).index(o["direction"]) for o in objects], -1, np.int32),
        "radii": pad([o["radius"] for o in objects], 0.0, np.float32),
        "positions": positions,
        "velocities": velocities,
    }
