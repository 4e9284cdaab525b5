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

import os

import grain
import numpy as np
from flax import serialization

from starflow_jax import fileio
from starflow_jax.errors import UserError

METADATA = "metadata.json"
NULL_EMBEDDING = "null_text_embedding.npy"


def read_metadata(directory) -> dict:
  if not directory or not (fileio.as_path(directory) / METADATA).is_file():
    raise UserError(f"data.latents_dir={str(directory)!r} has no {METADATA}; write one with "
                    "`python -m data_pipeline.preencode --config=... --out_dir=DIR` (see WORKSPACE.md)")
  return fileio.read_json(fileio.as_path(directory) / METADATA)


def shard_paths(directory, split: str) -> list[str]:
  directory = fileio.as_path(directory)
  if not directory.is_dir():
    return []
  return sorted(os.fspath(p) for p in directory.glob(f"{split}-*-of-*.array_record"))


def encode_record(record: dict) -> bytes:
  return serialization.msgpack_serialize({
      k: (np.asarray(v) if not isinstance(v, str) else v) for k, v in record.items()
  })


def decode_record(data: bytes) -> dict:
  return serialization.msgpack_restore(data)


class LatentSource:
  """{'video': float32 latents [T', H', W', C'], 'caption', 'text_embeddings' | 'tokens', 'label'}."""

  def __init__(self, directory: str, split: str = "train"):
    self.metadata = read_metadata(directory)
    split = split if split in self.metadata["splits"] else ("train" if split == "eval" else split)
    paths = shard_paths(directory, split)
    if not paths:
      raise UserError(f"{directory}: no shards for split {split!r} (have "
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


def null_text_embedding(directory) -> np.ndarray | None:
  path = fileio.as_path(directory) / NULL_EMBEDDING
  return fileio.load_npy(path) if path.is_file() else None
