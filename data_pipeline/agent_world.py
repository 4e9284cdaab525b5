"""A controllable procedural environment for world models: an agent moved by discrete actions.

A white square (the agent) moves by `step` pixels per frame in the direction of that frame's
action (stay, up, down, left, right), stopping at the borders; coloured shapes bounce around it
(drawn below the agent). Clip `i` depends only on (seed, i): its actions come from a random
policy that keeps its last action with probability `persistence`. `actions[t]` is the move from
frame t-1 to frame t (`actions[0]` is 'stay': the first frame has no move). `render_rollout`
draws the clip an action sequence gives from a start, the ground truth of a rollout.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from data_pipeline.shapes import COLORS, DIRECTIONS, _bounce, shape_mask
from starflow_jax.errors import UserError

ACTIONS = ("stay", "up", "down", "left", "right")
MOVES = np.array([(0.0, 0.0)] + [DIRECTIONS[a] for a in ACTIONS[1:]], np.float32)  # (row, col) per action
ACTION_LETTERS = {"S": 0, "U": 1, "D": 2, "L": 3, "R": 4}
AGENT_COLOR = "white"


@dataclasses.dataclass(frozen=True)
class AgentWorldConfig:
  """Static description of the environment (sizes in pixels)."""

  num_frames: int = 8
  height: int = 16
  width: int = 16
  agent_radius: float = 2.5  # half-side of the agent's square
  step: float = 2.0  # pixels per move
  max_objects: int = 1  # bouncing shapes besides the agent (0..max_objects per clip)
  object_radius: float = 2.5
  min_speed: float = 0.6
  max_speed: float = 1.4
  colors: tuple[str, ...] = ("red", "green", "blue", "magenta")
  persistence: float = 0.5
  num_examples: int = 100_000
  seed: int = 0

  def validate(self) -> "AgentWorldConfig":
    if self.num_frames < 2 or min(self.height, self.width) < 4 * self.agent_radius:
      raise UserError(f"invalid agent world: need >= 2 frames and frames of at least {4 * self.agent_radius:g} "
                      f"pixels a side, got {self.num_frames} frames of {self.height}x{self.width}")
    if AGENT_COLOR in self.colors or any(c not in COLORS for c in self.colors):
      raise UserError(f"agent world colours {self.colors}: choose from {sorted(set(COLORS) - {AGENT_COLOR})} "
                      "(white is the agent's)")
    if not 0 <= self.max_objects <= 3 or not 0 <= self.persistence < 1:
      raise UserError("agent world: need 0 <= max_objects <= 3 and 0 <= persistence < 1")
    return self

  @property
  def agent_bounds(self) -> tuple[np.ndarray, np.ndarray]:
    r = self.agent_radius
    return np.array([r, r]), np.array([self.height - r, self.width - r])


def parse_actions(text: str) -> list[int]:
  """'RRUULS' -> action ids (S stay, U up, D down, L left, R right)."""
  unknown = sorted({ch for ch in text.upper() if ch not in ACTION_LETTERS})
  if unknown or not text:
    raise UserError(f"actions {text!r}: use the letters S (stay), U (up), D (down), L (left), R (right)")
  return [ACTION_LETTERS[ch] for ch in text.upper()]


def agent_path(config: AgentWorldConfig, start: np.ndarray, actions) -> np.ndarray:
  """Agent centres [T, 2]: from `start`, each action after the first moving it by `step`,
  stopped at the borders."""
  low, high = config.agent_bounds
  positions = [np.asarray(start, np.float32)]
  for action in list(actions)[1:]:
    positions.append(np.clip(positions[-1] + config.step * MOVES[action], low, high))
  return np.stack(positions).astype(np.float32)


class AgentWorldSource:
  """grain random-access source: `source[i]` is a dict

    video: uint8 [T, H, W, 3]; actions: int32 [T]; agent_positions: float32 [T, 2] (row, col);
    num_objects: int; object_positions: float32 [max_objects, T, 2] (zeros for absent objects).
  """

  def __init__(self, config: AgentWorldConfig = AgentWorldConfig()):
    self.config = config.validate()

  def __len__(self) -> int:
    return self.config.num_examples

  def __repr__(self) -> str:
    return f"AgentWorldSource({self.config})"

  def random_actions(self, rng: np.random.Generator, num_frames: int) -> np.ndarray:
    """The random policy: a new uniform action, or (prob. persistence) the last one again."""
    actions = [0]
    for _ in range(num_frames - 1):
      keep = len(actions) > 1 and rng.random() < self.config.persistence
      actions.append(actions[-1] if keep else int(rng.integers(len(ACTIONS))))
    return np.asarray(actions, np.int32)

  def describe(self, index: int, num_frames: int | None = None) -> dict:
    """Clip `index`'s actions, agent path and objects (deterministic in (seed, index))."""
    c = self.config
    if not 0 <= index < len(self):
      raise IndexError(f"index {index} out of range for a source of {len(self)} clips")
    t = num_frames or c.num_frames
    rng = np.random.default_rng([c.seed, index])
    low, high = c.agent_bounds
    start = rng.uniform(low, high)
    actions = self.random_actions(rng, t)
    objects = []
    for _ in range(int(rng.integers(0, c.max_objects + 1))):
      r = c.object_radius
      o_low, o_high = np.array([r, r]), np.array([c.height - r, c.width - r])
      velocity = rng.uniform(c.min_speed, c.max_speed, 2) * rng.choice([-1.0, 1.0], 2)
      objects.append(
          dict(color=str(rng.choice(c.colors)),
               positions=_bounce(rng.uniform(o_low, o_high), velocity, o_low, o_high, t)))
    return dict(actions=actions, agent_positions=agent_path(c, start, actions), objects=objects)

  def render(self, agent_positions: np.ndarray, objects: list[dict]) -> np.ndarray:
    """Frames uint8 [T, H, W, 3]: the objects, then the agent on top."""
    c = self.config
    video = np.zeros((len(agent_positions), c.height, c.width, 3), np.uint8)
    for t in range(len(agent_positions)):
      for obj in objects:
        video[t][shape_mask("circle", obj["positions"][t], c.object_radius, c.height, c.width)] = COLORS[obj["color"]]
      video[t][shape_mask("square", agent_positions[t], c.agent_radius, c.height, c.width)] = COLORS[AGENT_COLOR]
    return video

  def render_rollout(self, index: int, actions) -> dict:
    """What clip `index`'s world does under `actions` (ids [T]) instead: the agent from the clip's
    start, the objects on their own paths (ground truth for a model's rollout)."""
    world = self.describe(index, len(actions))
    path = agent_path(self.config, world["agent_positions"][0], actions)
    return dict(video=self.render(path, world["objects"]), agent_positions=path, actions=np.asarray(actions, np.int32))

  def __getitem__(self, index: int) -> dict:
    c = self.config
    world = self.describe(int(index))
    object_positions = np.zeros((c.max_objects, c.num_frames, 2), np.float32)
    for i, obj in enumerate(world["objects"]):
      object_positions[i] = obj["positions"]
    return {
        "video": self.render(world["agent_positions"], world["objects"]),
        "actions": world["actions"],
        "agent_positions": world["agent_positions"],
        "num_objects": np.int32(len(world["objects"])),
        "object_positions": object_positions,
    }


def agent_centre(frame: np.ndarray, threshold: float = 0.6) -> np.ndarray | None:
  """The agent's centre (row, col; the units of `agent_positions`, pixel i spanning [i, i + 1))
  in a frame [H, W, 3] in [-1, 1]: the centroid of the pixels whose every channel is above
  `threshold` (only the agent is white); None when none are."""
  mask = np.min(np.asarray(frame), axis=-1) > threshold
  if not mask.any():
    return None
  rows, cols = np.nonzero(mask)
  return np.array([rows.mean() + 0.5, cols.mean() + 0.5], np.float32)


def free_actions(config: AgentWorldConfig, start: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
  """A random action sequence [length] (the first 'stay') under which the agent from `start`
  never meets a border, so every commanded move is visible: the random policy (keep the last
  action with probability `persistence`) restricted to the moves that stay inside."""
  low, high = config.agent_bounds
  position, actions = np.asarray(start, np.float32), [0]
  for _ in range(length - 1):
    inside = [
        a for a in range(len(ACTIONS))
        if np.all((position + config.step * MOVES[a] >= low) & (position + config.step * MOVES[a] <= high))
    ]
    keep = actions[-1] in inside and len(actions) > 1 and rng.random() < config.persistence
    actions.append(actions[-1] if keep else int(rng.choice(inside)))
    position = position + config.step * MOVES[actions[-1]]
  return np.asarray(actions, np.int32)


def move_of(displacement: np.ndarray, step: float) -> int:
  """The action a displacement (row, col) looks like: 'stay' under step / 2 in both axes, else
  the direction of the larger component."""
  d = np.asarray(displacement, np.float32)
  if np.abs(d).max() < step / 2:
    return 0
  if abs(d[0]) >= abs(d[1]):
    return 1 if d[0] < 0 else 2
  return 3 if d[1] < 0 else 4
