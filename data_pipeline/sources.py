"""Data sources by name, from the experiment config's `data` section.

  data.source = 'shapes'   procedural captioned moving shapes (data.shapes: ShapesConfig fields)
                'agent_world'  an agent moved by per-frame actions among bouncing shapes
                           (data.agent_world: AgentWorldConfig fields; clips carry 'actions')
                'digits'   scikit-learn's bundled 8x8 digits (optional extra), labels + captions
                'tfds'     a tensorflow-datasets dataset read through ArrayRecord (data.tfds)
                'latents'  pre-encoded ArrayRecord shards (data.latents_dir)
Every source is random access (len, __getitem__) and yields dicts with 'video' [T, H, W, C]
(uint8 pixels, or float32 latents for 'latents') and 'caption' and/or 'label'.
"""

from __future__ import annotations

import ml_collections

from data_pipeline import digits, latents, tfds_sources
from data_pipeline.agent_world import AgentWorldConfig, AgentWorldSource
from data_pipeline.pipeline import ToTrainingExample
from data_pipeline.shapes import MovingShapesSource, ShapesConfig
from starflow_jax.errors import UserError


def _procedural_config(cls, section: ml_collections.ConfigDict, split: str):
  """A procedural source's config from its config section; held-out splits draw another seed stream."""
  values = section.to_dict()
  values.setdefault("seed", 0)
  if split != "train":
    values["seed"] = values["seed"] + 1_000_003
  return cls(**values).validate()


def shapes_config(data: ml_collections.ConfigDict, split: str = "train") -> ShapesConfig:
  return _procedural_config(ShapesConfig, data.shapes, split)


def agent_world_config(data: ml_collections.ConfigDict, split: str = "train") -> AgentWorldConfig:
  return _procedural_config(AgentWorldConfig, data.agent_world, split)


class SourceKind:
  """What the rest of the code asks of one kind of source (one small subclass per kind)."""

  def build(self, data: ml_collections.ConfigDict, split: str):
    """The random-access source of `split` ('train' or 'eval')."""
    raise NotImplementedError

  def vocabulary(self, data: ml_collections.ConfigDict) -> list[str]:
    """Every word the captions use (the built-in word tokenizer's vocabulary)."""
    raise NotImplementedError

  def example_shape(self, data: ml_collections.ConfigDict) -> tuple[int, int, int, int]:
    """(frames, height, width, channels) of the 'video' entries."""
    raise NotImplementedError

  def transforms(self, data: ml_collections.ConfigDict, training: bool) -> list:
    """Per-element transforms before the model-input selection."""
    del data, training
    return []

  def provides_embeddings(self, data: ml_collections.ConfigDict) -> bool:
    """Whether examples carry precomputed text embeddings."""
    del data
    return False


class _Shapes(SourceKind):

  def build(self, data, split):
    return MovingShapesSource(shapes_config(data, split))

  def vocabulary(self, data):
    return shapes_config(data).vocabulary

  def example_shape(self, data):
    c = shapes_config(data)
    return c.num_frames, c.height, c.width, 3


class _AgentWorld(SourceKind):

  def build(self, data, split):
    return AgentWorldSource(agent_world_config(data, split))

  def vocabulary(self, data):
    return []

  def example_shape(self, data):
    c = agent_world_config(data)
    return c.num_frames, c.height, c.width, 3


class _Digits(SourceKind):

  def build(self, data, split):
    return digits.DigitsSource(split=split, size=data.get("digits_size", 8))

  def vocabulary(self, data):
    return digits.VOCABULARY

  def example_shape(self, data):
    size = data.get("digits_size", 8)
    return 1, size, size, 1


class _Tfds(SourceKind):

  def build(self, data, split):
    return tfds_sources.build_tfds_source(data, split)

  def vocabulary(self, data):
    return tfds_sources.caption_vocabulary(data)

  def example_shape(self, data):
    return tfds_sources.example_shape(data)

  def transforms(self, data, training):
    deterministic, random = tfds_sources.transforms(data, training)
    return random[:1] + deterministic + random[1:]  # clip first: never resize a whole video


class _Latents(SourceKind):

  def build(self, data, split):
    return latents.LatentSource(data.latents_dir, split)

  def vocabulary(self, data):
    return latents.read_metadata(data.latents_dir).get("vocabulary", [])

  def example_shape(self, data):
    return tuple(latents.read_metadata(data.latents_dir)["video_shape"])

  def provides_embeddings(self, data):
    return bool(latents.read_metadata(data.latents_dir).get("text_embeddings"))


SOURCES: dict[str, SourceKind] = {
    "shapes": _Shapes(),
    "agent_world": _AgentWorld(),
    "digits": _Digits(),
    "tfds": _Tfds(),
    "latents": _Latents()
}


def source_kind(data: ml_collections.ConfigDict) -> SourceKind:
  kind = SOURCES.get(data.source)
  if kind is None:
    raise UserError(f"unknown data.source {data.source!r}; choose {', '.join(map(repr, SOURCES))}")
  return kind


def build_source(data: ml_collections.ConfigDict, split: str = "train"):
  """The random-access source for `data.source` and `split` ('train' or 'eval')."""
  return source_kind(data).build(data, split)


def caption_vocabulary(data: ml_collections.ConfigDict) -> list[str]:
  """Every word the source's captions use (the built-in word tokenizer's vocabulary)."""
  return source_kind(data).vocabulary(data)


def provides_embeddings(data: ml_collections.ConfigDict) -> bool:
  """True when examples carry precomputed text embeddings (pre-encoded latents with a text encoder)."""
  return source_kind(data).provides_embeddings(data)


def example_shape(data: ml_collections.ConfigDict) -> tuple[int, int, int, int]:
  """(frames, height, width, channels) of the source's 'video' entries."""
  return source_kind(data).example_shape(data)


def element_transforms(data: ml_collections.ConfigDict,
                       tokenizer=None,
                       training: bool = True,
                       keep: tuple[str, ...] = ()) -> list:
  """The per-element transforms of `data.source`, ending with the model-input selection."""
  return source_kind(data).transforms(data, training) + [ToTrainingExample(tokenizer, keep)]
