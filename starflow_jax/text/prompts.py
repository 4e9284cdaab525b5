"""The caption template of the official sampler (apple/ml-starflow `utils/common.py`
`preprocess_text`), applied to every prompt, the empty null prompt included, before the text
encoder: models trained with `fps_cond`, `cond_noise_level` or `mix_aspect` read their captions
in this form, and conditioning them on a raw caption is out of their training distribution.

  fps       "A video with {fps} fps:\\n{caption}\\n" (fps > 0), else "An image:\\n{caption}\\n"
  noise     "Noise Level {int(noise_std * 1000)}:\\n" in front
  aspect    "\\n in a {ratio} aspect ratio.\\n" after
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from starflow_jax.errors import UserError

ASPECT_RATIOS = ("1:1", "2:3", "3:2", "16:9", "9:16", "4:5", "5:4", "21:9", "9:21")


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
  """Which parts of the official template a model was trained with (all off: raw captions)."""

  fps: bool = False  # official fps_cond
  noise_level: bool = False  # official cond_noise_level
  aspect_ratio: bool = False  # official mix_aspect

  @property
  def active(self) -> bool:
    return self.fps or self.noise_level or self.aspect_ratio

  def apply(self, captions: Sequence[str], *, fps: int, noise_std: float, aspect_ratio: str = "1:1") -> list[str]:
    """The captions as the model read them in training. fps: the clip's frame rate (0: an image)."""
    text = [str(c) for c in captions]
    if self.fps:
      text = [f"A video with {fps} fps:\n{t}\n" if fps > 0 else f"An image:\n{t}\n" for t in text]
    if self.noise_level:
      level = int(noise_std * 1000)  # as officially: truncated
      text = [f"Noise Level {level}:\n{t}" for t in text]
    if self.aspect_ratio:
      check_aspect_ratio(aspect_ratio)
      text = [f"{t}\n in a {aspect_ratio} aspect ratio.\n" for t in text]
    return text

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, values: dict) -> "PromptTemplate":
    unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise UserError(f"unknown prompt template fields {sorted(unknown)}")
    return cls(**{k: bool(v) for k, v in values.items()})


def check_aspect_ratio(ratio: str) -> str:
  """`ratio` if it is one of the official sampler's ratios ('W:H'), else a UserError."""
  if ratio not in ASPECT_RATIOS:
    raise UserError(f"aspect ratio {ratio!r} is not one of {', '.join(ASPECT_RATIOS)}")
  return ratio
