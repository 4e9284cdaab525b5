"""Data sources by name, from the experiment config's `data` section.

  data.source = 'shapes'   procedural captioned moving shapes (data.shapes: ShapesConfig fields)
                'digits'   scikit-learn's bundled 8x8 digits (optional extra), labels + captions
                'tfds'     a tensorflow-datasets dataset read through ArrayRecord (data.tfds)
                'latents'  pre-encoded ArrayRecord shards (data.latents_dir)
Every source is random access (len, __getitem__) and yields dicts with 'video' [T, H, W, C]
(uint8 pixels, or float32 latents for 'latents') and 'caption' and/or 'label'.
"""

from __future__ import annotations

import ml_collections

from data_pipeline.shapes import MovingShapesSource, ShapesConfig
from starflow_jax.errors import UserError


def shapes_config(data: ml_collections.ConfigDict, split: str = "train") -> ShapesConfig:
  values = data.shapes.to_dict()
  values.setdefault("seed", 0)
  if split != "train":  # held-out clips: a different seed stream
    values["seed"] = values["seed"] + 1_000_003
  return ShapesConfig(**values).validate()


def build_source(data: ml_collections.ConfigDict, split: str = "train"):
  """The random-access source for `data.source` and `split` ('train' or 'eval')."""
  if data.source == "shapes":
    return MovingShapesSource(shapes_config(data, split))
  if data.source == "digits":
    from data_pipeline import digits
    return digits.DigitsSource(split=split, size=data.get("digits_size", 8))
  if data.source == "tfds":
    from data_pipeline import tfds_sources
    return tfds_sources.build_tfds_source(data, split)
  if data.source == "latents":
    from data_pipeline import latents
    return latents.LatentSource(data.latents_dir, split)
  raise UserError(f"unknown data.source {data.source!r}; choose 'shapes', 'digits', 'tfds' or 'latents'")


def caption_vocabulary(data: ml_collections.ConfigDict) -> list[str]:
  """Every word the source's captions use (the built-in word tokenizer's vocabulary)."""
  if data.source == "shapes":
    return shapes_config(data).vocabulary
  if data.source == "digits":
    from data_pipeline import digits
    return digits.VOCABULARY
  if data.source == "tfds":
    from data_pipeline import tfds_sources
    return tfds_sources.caption_vocabulary(data)
  if data.source == "latents":
    from data_pipeline import latents
    return latents.read_metadata(data.latents_dir).get("vocabulary", [])
  raise UserError(f"unknown data.source {data.source!r}")


def provides_embeddings(data: ml_collections.ConfigDict) -> bool:
  """True when examples carry precomputed text embeddings (pre-encoded latents with a text encoder)."""
  if data.source != "latents":
    return False
  from data_pipeline import latents
  return bool(latents.read_metadata(data.latents_dir).get("text_embeddings"))


def example_shape(data: ml_collections.ConfigDict) -> tuple[int, int, int, int]:
  """(frames, height, width, channels) of the source's 'video' entries."""
  if data.source == "shapes":
    c = shapes_config(data)
    return c.num_frames, c.height, c.width, 3
  if data.source == "digits":
    size = data.get("digits_size", 8)
    return 1, size, size, 1
  if data.source == "tfds":
    from data_pipeline import tfds_sources
    return tfds_sources.example_shape(data)
  if data.source == "latents":
    from data_pipeline import latents
    return tuple(latents.read_metadata(data.latents_dir)["video_shape"])
  raise UserError(f"unknown data.source {data.source!r}")


def element_transforms(data: ml_collections.ConfigDict, tokenizer=None, training: bool = True,
                       keep: tuple[str, ...] = ()) -> list:
  """The per-element transforms of `data.source`, ending with the model-input selection."""
  from data_pipeline.pipeline import ToTrainingExample
  steps = []
  if data.source == "tfds":
    from data_pipeline import tfds_sources
    deterministic, random = tfds_sources.transforms(data, training)
    steps = random[:1] + deterministic + random[1:]  # clip first: never resize a whole video
  return steps + [ToTrainingExample(tokenizer, keep)]
