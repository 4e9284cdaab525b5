"""Pre-encoded latents in ArrayRecord shards: the format pod-scale training reads.

A latents directory holds
  metadata.json                  splits and sizes, pixel and latent shapes, the autoencoder,
                                 the caption vocabulary, whether text embeddings are included
  null_text_embedding.npy        the text encoder's output for the empty prompt (if embeddings)
  {split}-{i:05d}-of-{n:05d}.array_record
                                 one record per clip: a msgpack dict with 'latents' float32
                                 [T', H', W', C'], 'caption', and 'text_embeddings' [L, d] or
                                 'tokens' [L] and 'label' when the data has them.
`LatentSource` reads it with random access (grain's ArrayRecordDataSource); training then skips
the autoencoder (data.source = 'latents').
"""

from __future__ import annotations

import glob
import json
import os

import grain
import numpy as np
from flax import serialization

METADATA = "metadata.json"
NULL_EMBEDDING = "null_text_embedding.npy"


def read_metadata(directory: str) -> dict:
  path = os.path.join(directory or "", METADATA)
  if not directory or not os.path.isfile(path):
    raise ValueError(f"data.latents_dir={directory!r} has no {METADATA}; write one with "
                     "`python -m data_pipeline.preencode --config=... --out_dir=DIR` (see WORKSPACE.md)")
  with open(path) as f:
    return json.load(f)


def shard_paths(directory: str, split: str) -> list[str]:
  return sorted(glob.glob(os.path.join(directory, f"{split}-*-of-*.array_record")))


def encode_record(record: dict) -> bytes:
  return serialization.msgpack_serialize({k: (np.asarray(v) if not isinstance(v, str) else v)
                                          for k, v in record.items()})


def decode_record(data: bytes) -> dict:
  return serialization.msgpack_restore(data)


class LatentSource:
  """{'video': float32 latents [T', H', W', C'], 'caption', 'text_embeddings' | 'tokens', 'label'}."""

  def __init__(self, directory: str, split: str = "train"):
    self.metadata = read_metadata(directory)
    split = split if split in self.metadata["splits"] else ("train" if split == "eval" else split)
    paths = shard_paths(directory, split)
    if not paths:
      raise ValueError(f"{directory}: no shards for split {split!r} (have "
                       f"{sorted(self.metadata['splits'])}); re-run data_pipeline.preencode")
    self.source = grain.sources.ArrayRecordDataSource(paths)
    self.directory, self.split = directory, split

  def __len__(self) -> int:
    return len(self.source)

  def __repr__(self) -> str:
    return f"LatentSource({self.directory!r}, {self.split!r}, {len(self)} clips)"

  def __getitem__(self, index: int) -> dict:
    record = decode_record(self.source[int(index)])
    out = {"video": np.asarray(record.pop("latents"), np.float32)}
    out.update(record)
    return out


def null_text_embedding(directory: str) -> np.ndarray | None:
  path = os.path.join(directory, NULL_EMBEDDING)
  return np.load(path) if os.path.isfile(path) else None
