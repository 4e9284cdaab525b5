"""grain input pipelines: source -> global shuffle -> per-host shard -> transforms -> batch.

One code path for every source (procedural shapes, tfds ArrayRecord, pre-encoded latents,
scikit-learn digits). Elements leave the pipeline as numpy dicts:
  video: uint8 [T, H, W, C] (pixels) or float32 latents [T', H', W', C'] (pre-encoded),
  tokens: int32 [L] (caption tokens) when the source has captions, label: int32 when it has labels.
Per-element randomness (clip start, flips) comes from grain's seeded `random_map`, so a pipeline
is a deterministic function of (seed, step): its iterator state (a small dict) is saved with the
training checkpoint and a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import grain
import numpy as np

from starflow_jax.errors import UserError
from starflow_jax.text.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class PipelineOptions:
  """How elements are read, shuffled, sharded and batched.

  batch_size is this host's rows of every global batch. The global batch of step j is the
  stream's elements [j * G, (j + 1) * G), G = batch_size * shard_count, and this host reads row
  block shard_index of it: so host batch j holds exactly the rows of global batch j that the
  host's devices own, whatever the process count (`starflow_jax.sharding.process_batch_block`
  gives the block of a mesh), and the iterator's position is the global step on every host.
  """

  batch_size: int
  seed: int = 0
  shuffle: bool = True
  shard_index: int = 0
  shard_count: int = 1
  num_epochs: int | None = None  # None: repeat forever (training)
  drop_remainder: bool = True
  worker_count: int = 0  # grain worker processes; 0 = in the main process (CI)
  worker_buffer_size: int = 2
  read_threads: int = 4
  prefetch_buffer_size: int = 8

  def validate(self) -> "PipelineOptions":
    if self.batch_size <= 0:
      raise UserError(f"batch_size={self.batch_size} must be positive")
    if not 0 <= self.shard_index < self.shard_count:
      raise UserError(f"shard_index={self.shard_index} must be in [0, shard_count={self.shard_count})")
    if self.worker_count < 0:
      raise UserError(f"worker_count={self.worker_count} must be >= 0")
    return self


def host_share(length: int, rows: int, index: int, count: int) -> int:
  """Elements of a `length`-element stream that host `index` of `count` reads (`rows` per batch)."""
  full, rest = divmod(length, rows * count)
  return full * rows + min(rows, max(0, rest - index * rows))


class HostRowsMapDataset(grain.MapDataset):
  """Row block `index` of `count` of every global batch of a stream (see PipelineOptions).

  Element i is the stream's element (i // b) * b * count + index * b + i % b, b = rows per host.
  The hosts' streams are disjoint and together cover the parent; a final partial global batch
  is split in the same row order (its rows past the end belong to nobody)."""

  _MUTATES_ELEMENT_SPEC = False

  def __init__(self, parent: grain.MapDataset, rows: int, index: int, count: int):
    super().__init__(parent)
    self._rows, self._index, self._count = rows, index, count
    self._length = host_share(len(parent), rows, index, count)

  def __len__(self) -> int:
    return self._length

  def _parent_index(self, index: int) -> int:
    step, row = divmod(index, self._rows)
    return step * self._rows * self._count + self._index * self._rows + row

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._parent[self._parent_index(index)]

  def _getitems(self, indices):
    return self._parent._getitems([self._parent_index(i) for i in indices])  # pylint: disable=protected-access

  def __str__(self) -> str:
    return f"HostRowsMapDataset(rows={self._rows}, block={self._index} of {self._count})"


class ToTrainingExample(grain.transforms.Map):
  """Keeps the model inputs: video (or image as a 1-frame video), caption tokens, label."""

  def __init__(self, tokenizer: Tokenizer | None, keep: tuple[str, ...] = ()):
    self.tokenizer = tokenizer
    self.keep = keep

  def map(self, element: dict) -> dict:
    if "video" in element:
      video = np.asarray(element["video"])
    elif "image" in element:
      video = np.asarray(element["image"])[None]
    else:
      raise UserError(f"element has neither 'video' nor 'image' (keys: {sorted(element)})")
    if video.ndim != 4:
      raise UserError(f"expected a video [T, H, W, C], got shape {video.shape}")
    out = {"video": video}
    if self.tokenizer is not None:
      out["tokens"] = self.tokenizer.encode(_text(element.get("caption", "")))
    if "label" in element:
      out["label"] = np.int32(element["label"])
    if "text_embeddings" in element:  # pre-encoded data
      out["text_embeddings"] = np.asarray(element["text_embeddings"], np.float32)
    if "actions" in element:  # per-frame action ids (world models)
      out["actions"] = np.asarray(element["actions"], np.int32)
    for key in self.keep:
      out[key] = element[key]
    return out


def _text(caption) -> str:
  if isinstance(caption, bytes):
    return caption.decode("utf-8")
  if isinstance(caption, np.ndarray):
    return _text(caption.item())
  return str(caption)


def build_dataset(source, options: PipelineOptions, transforms: Sequence = ()) -> grain.IterDataset:
  """The pipeline as a grain IterDataset (iterate it; its iterator has get_state/set_state).

  Shuffling is global (a permutation of the whole source, a new one every epoch) and happens
  before sharding, so the per-host shards are disjoint and together cover every epoch.
  `transforms` run in order; grain RandomMap transforms get a seeded per-element generator.
  """
  options.validate()
  if len(source) == 0:
    raise UserError(f"the data source {source!r} is empty; check the dataset path / split")
  ds = grain.MapDataset.source(source)
  if options.shuffle:
    ds = ds.seed(options.seed).shuffle()  # a new permutation of the whole source every epoch
  ds = ds.repeat(options.num_epochs)
  if options.shard_count > 1:  # this host's rows of every global batch
    ds = HostRowsMapDataset(ds, options.batch_size, options.shard_index, options.shard_count)
  for i, transform in enumerate(transforms):
    if isinstance(transform, grain.transforms.RandomMap):
      ds = ds.random_map(transform, seed=options.seed + 1 + i)
    else:
      ds = ds.map(transform)
  ds = ds.batch(options.batch_size, drop_remainder=options.drop_remainder)
  it = ds.to_iter_dataset(
      grain.ReadOptions(num_threads=options.read_threads, prefetch_buffer_size=options.prefetch_buffer_size))
  if options.worker_count > 0:
    it = it.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=options.worker_count,
                                     per_worker_buffer_size=options.worker_buffer_size))
  return it


def iterator_state(iterator) -> dict[str, Any]:
  """The iterator's position as a JSON-serialisable dict (saved with training checkpoints)."""
  return iterator.get_state()


def restore_iterator(dataset: grain.IterDataset, state: dict[str, Any] | None):
  """A fresh iterator of `dataset`, moved to `state` when given."""
  iterator = iter(dataset)
  if state is not None:
    iterator.set_state(state)
  return iterator
