"""Procedural anomalies on the moving-shapes clips, deterministic by (seed, index, kind).

`AnomalousShapes(config)[kind, index]` is clip `index` of `MovingShapesSource(config)` with its
first object changed from an onset frame t0 on (1 <= t0 < T - 1):
  teleport     the object jumps by a third to a half of the frame, then moves on as before
               (the whole jumped path inside the frame)
  color        the object takes another colour
  border_pass  the object, set to reach a wall at a random frame, passes through it and leaves
               the frame instead of bouncing (t0: the first frame where the two differ)
  freeze       the object stops
  reverse      the object turns back without touching a wall
The result has the clip's video (uint8 [T, H, W, 3]), caption (of the normal clip), `onset`,
`kind` and `reference`: the same clip without the anomaly (for border_pass: bouncing off the
wall it was set to reach). `normal(index)` is an unchanged clip of the source.
"""

from __future__ import annotations

import numpy as np

from data_pipeline.shapes import COLORS, MovingShapesSource, ShapesConfig, caption_of, shape_mask

KINDS = ("teleport", "color", "border_pass", "freeze", "reverse")


class AnomalousShapes:
  """Moving-shapes clips with one anomaly each (see the module docstring)."""

  def __init__(self, config: ShapesConfig = ShapesConfig()):
    self.source = MovingShapesSource(config)
    self.config = self.source.config

  def normal(self, index: int) -> dict:
    objects = self.source.describe(index)
    return {"video": self.render(objects), "caption": caption_of(objects), "onset": -1, "kind": "normal"}

  def __getitem__(self, key: tuple[str, int]) -> dict:
    kind, index = key
    if kind not in KINDS:
      raise ValueError(f"unknown anomaly kind {kind!r}; one of {KINDS}")
    c = self.config
    for candidate in range(index, index + 1000):
      objects = self.source.describe(candidate % len(self.source))
      rng = np.random.default_rng([c.seed, candidate, KINDS.index(kind), 17])
      changed = getattr(self, f"_{kind}")(objects[0], rng)
      if changed is not None:
        reference, obj, onset = changed
        return {
            "video": self.render([obj] + objects[1:]),
            "caption": caption_of(objects),
            "onset": onset,
            "kind": kind,
            "index": candidate,
            "reference": self.render([reference] + objects[1:])
        }
    raise ValueError(f"no clip from index {index} admits a {kind!r} anomaly: clips of {c.num_frames} frames at "
                     "these speeds are too short for it (moving shapes of 8 frames are long enough)")

  def render(self, objects: list[dict]) -> np.ndarray:
    """Like `MovingShapesSource.render`, with an optional per-frame colour list `colors`."""
    c = self.config
    video = np.zeros((c.num_frames, c.height, c.width, 3), np.uint8)
    for obj in objects:
      colors = obj.get("colors", [obj["color"]] * c.num_frames)
      for t in range(c.num_frames):
        mask = shape_mask(obj["shape"], obj["positions"][t], obj["radius"], c.height, c.width)
        video[t][mask] = np.array(COLORS[colors[t]], np.uint8)
    return video

  # ---------------------------------------------------------------- the anomalies
  def _onset(self, rng) -> int:
    return int(rng.integers(max(1, self.config.num_frames // 4), self.config.num_frames - 1))

  def _teleport(self, obj, rng, tries: int = 32):
    """Jumps by side/3 to side/2 at the onset; the jump is drawn again until the whole rest of
    the path stays inside the frame (a jump clipped at the wall could shrink to a fraction of a
    pixel); None when no draw fits."""
    c, onset = self.config, self._onset(rng)
    side = min(c.height, c.width)
    low, high = np.full(2, obj["radius"]), np.array([c.height, c.width]) - obj["radius"]
    for _ in range(tries):
      angle = rng.uniform(0, 2 * np.pi)
      jump = np.array([np.sin(angle), np.cos(angle)]) * rng.uniform(side / 3, side / 2)
      moved = obj["positions"][onset:] + jump  # [T - onset, 2]
      if np.all(moved >= low) and np.all(moved <= high):
        positions = obj["positions"].copy()
        positions[onset:] = moved
        return obj, {**obj, "positions": positions}, onset
    return None

  def _color(self, obj, rng):
    onset = self._onset(rng)
    other = str(rng.choice([name for name in self.source.config.colors if name != obj["color"]]))
    colors = [obj["color"]] * onset + [other] * (self.config.num_frames - onset)
    return obj, {**obj, "colors": colors}, onset

  def _border_pass(self, obj, rng):
    c = self.config
    t = np.arange(c.num_frames, dtype=np.float64)[:, None]
    low, high = np.full(2, obj["radius"]), np.array([c.height, c.width]) - obj["radius"]
    velocity = obj["velocity"]
    axis = int(np.argmax(np.abs(velocity)))
    hit = rng.uniform(max(1.0, c.num_frames / 4), c.num_frames - 2)  # when it reaches the wall
    start = obj["positions"][0].copy()
    start[axis] = (high if velocity[axis] > 0 else low)[axis] - velocity[axis] * hit
    if not low[axis] <= start[axis] <= high[axis]:
      return None  # too fast to start inside the frame
    straight = start + velocity * t
    span = np.maximum(high - low, 1e-9)
    u = np.mod(start - low + velocity * t, 2 * span)
    bounced = low + np.where(u <= span, u, 2 * span - u)
    differs = np.nonzero(np.abs(straight - bounced).max(axis=1) > 0.5)[0]  # half a pixel apart
    if len(differs) == 0 or differs[0] >= c.num_frames - 1:
      return None
    return {**obj, "positions": bounced}, {**obj, "positions": straight}, int(differs[0])

  def _freeze(self, obj, rng):
    onset = self._onset(rng)
    positions = obj["positions"].copy()
    positions[onset:] = positions[onset - 1]
    return obj, {**obj, "positions": positions}, onset

  def _reverse(self, obj, rng):
    onset = self._onset(rng)
    positions = obj["positions"].copy()
    steps = np.arange(1, self.config.num_frames - onset + 1)
    back = positions[onset - 1] - obj["velocity"] * steps[:, None]
    low, high = np.full(2, obj["radius"]), np.array([self.config.height, self.config.width]) - obj["radius"]
    if np.any(back < low - 1e-6) or np.any(back > high + 1e-6):
      return None  # it would touch a wall: not a clean reversal
    positions[onset:] = back
    return obj, {**obj, "positions": positions}, onset
