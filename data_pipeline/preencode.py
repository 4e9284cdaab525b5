"""Encode a dataset once into ArrayRecord latent shards (+ text embeddings) for training at scale.

  python -m data_pipeline.preencode --config=experiments/configs/tiny_video.py \
      --out_dir=/data/latents/shapes --split=train --num_examples=20000 [--text_model=MODEL_DIR]

Reads `config.data` (any source), clips and resizes as training would (without random
augmentation), runs `config.autoencoder`'s encoder (compiled, batched) and writes shards of
`--shard_size` clips plus metadata.json. With --t5 (a Hugging Face T5 / Flan-T5 directory) or
--text_model (a model directory holding a trained built-in text encoder), captions are stored as
embeddings [L, d] and the empty prompt's embedding is saved for classifier-free guidance;
otherwise the tokens are stored. Train from the result with
--config.data.source=latents --config.data.latents_dir=DIR. Existing output is never replaced:
a split already written must be removed by hand.

Multi-host (--multihost, the same command on every host): each process encodes its own rows of
every batch on its own devices and writes its own shards (numbered per process); process 0
writes metadata.json once all are done.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from array_record.python import array_record_module
from jax.experimental import multihost_utils
from ml_collections import config_flags
import tqdm

from data_pipeline import latents, pipeline, sources
from data_pipeline.pixels import pixels_to_unit
from experiments import cli
from starflow_jax import checkpoint, distributed, experiment, fileio
from starflow_jax.errors import UserError
from starflow_jax.text.encoder import TextEncoder
from starflow_jax.text.t5 import T5TextEncoder

FLAGS = flags.FLAGS


def define_flags():
  """Registers the flags of this command; called only when it runs as a program, so that
  every module can be imported into one process (tests) without clashing flag names."""
  config_flags.DEFINE_config_file("config", None, "experiment config whose data/autoencoder to use")
  flags.DEFINE_string("out_dir", None, "directory for the shards and metadata.json")
  flags.DEFINE_string("split", "train", "split to encode ('train' or 'eval')")
  flags.DEFINE_integer("num_examples", None, "clips to encode (default: the whole split)")
  flags.DEFINE_integer("shard_size", 1000, "clips per ArrayRecord shard")
  flags.DEFINE_integer("batch_size", 32, "clips per encoder call")
  flags.DEFINE_string("text_model", None, "model directory whose built-in text encoder embeds captions")
  flags.DEFINE_string("t5", None, "Hugging Face T5 / Flan-T5 directory whose encoder embeds captions")
  flags.DEFINE_bool("multihost", False, "encode on every host of a multi-host job (jax.distributed)")
  cli.define_launch_flags()


class _Head:
  """The first `count` elements of a random-access source."""

  def __init__(self, source, count: int):
    self.source, self.count = source, count

  def __len__(self) -> int:
    return self.count

  def __getitem__(self, index: int):
    return self.source[index]


@dataclasses.dataclass(frozen=True)
class CaptionEmbedder:
  """Captions -> text embeddings [B, L, d] (a T5 directory or a model's built-in encoder)."""

  embed: Callable[[list[str]], np.ndarray]
  null_embedding: np.ndarray  # the empty prompt's [L, d], for classifier-free guidance
  source: str  # the encoder's path, recorded in metadata.json


def caption_embedder(config, text_model: str | None, t5: str | None) -> CaptionEmbedder | None:
  """How captions are stored: embedded by `t5` or `text_model`'s encoder, else None (tokens)."""
  t5 = t5 or config.text.get("t5_path", "") or None
  if t5:
    t5_encoder = T5TextEncoder(t5, config.model.txt_size)
    embed = lambda captions: np.asarray(t5_encoder(captions))
    return CaptionEmbedder(embed, embed([""])[0], t5)
  if not text_model:
    return None
  bundle = checkpoint.load_bundle(text_model)
  if bundle.text_config is None:
    raise UserError(f"{text_model} has no built-in text encoder")
  tokenizer = bundle.text_config.tokenizer
  encoder = TextEncoder(bundle.text_config)
  apply = jax.jit(lambda ids: encoder.apply({"params": bundle.text_params}, ids))
  embed = lambda captions: np.asarray(apply(jnp.asarray(tokenizer.encode_batch(captions))))
  return CaptionEmbedder(embed, embed([""])[0], text_model)


def latent_encoder(exp: experiment.Experiment) -> Callable[[np.ndarray], jnp.ndarray]:
  """Pixels [B, T, H, W, C] (uint8) -> the autoencoder's latents, compiled."""
  autoencoder = exp.build_autoencoder()
  encode = lambda video: autoencoder.encode(pixels_to_unit(video, None))
  if getattr(autoencoder, "jit_inside", False):  # the WAN VAE compiles its own chunk steps
    return encode
  return jax.jit(encode)


class _ShardWriter:
  """Records -> this process's ArrayRecord shards of `shard_size` records each; shards are
  numbered per process: process p writes shards [p * per_process, (p + 1) * per_process)."""

  def __init__(self, out_dir, split: str, shard_size: int, per_process: int, processes: int):
    self.out_dir, self.split, self.shard_size = out_dir, split, shard_size
    self.first, self.num_shards = jax.process_index() * per_process, per_process * processes
    self.written, self.shard, self.writer = 0, -1, None

  def write(self, record: dict) -> None:
    if self.written // self.shard_size != self.shard:
      self.close()
      self.shard += 1
      path = self.out_dir / f"{self.split}-{self.first + self.shard:05d}-of-{self.num_shards:05d}.array_record"
      self.writer = array_record_module.ArrayRecordWriter(os.fspath(path), "group_size:1")
    self.writer.write(latents.encode_record(record))
    self.written += 1

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()
      self.writer = None


def _records(batch: dict, lat: np.ndarray, emb: np.ndarray | None):
  """The records of one encoded batch: latents, caption, embeddings or tokens, label."""
  for i in range(len(lat)):
    record = {"latents": lat[i].astype(np.float32), "caption": str(batch["caption"][i])}
    if emb is not None:
      record["text_embeddings"] = emb[i].astype(np.float32)
    elif "tokens" in batch:
      record["tokens"] = batch["tokens"][i]
    if "label" in batch:
      record["label"] = np.int32(batch["label"][i])
    yield record


def preencode(config,
              out_dir: str,
              split: str = "train",
              num_examples: int | None = None,
              shard_size: int = 1000,
              batch_size: int = 32,
              text_model: str | None = None,
              t5: str | None = None,
              progress: bool = True) -> dict:
  """Writes the shards of one split and (re)writes metadata.json; returns the metadata.

  Collective in a multi-host run: every process calls it with the same arguments."""
  out_dir = fileio.as_path(out_dir)
  existing = latents.shard_paths(out_dir, split)
  if existing:
    raise FileExistsError(f"{out_dir} already has {len(existing)} shards of split {split!r}; remove "
                          "them first (nothing was overwritten)")
  distributed.barrier(f"preencode checked {out_dir}")
  out_dir.mkdir(parents=True, exist_ok=True)
  exp = experiment.Experiment.from_config(config)
  source = sources.build_source(exp.data, split)
  total = min(len(source), num_examples or len(source))
  if total <= 0:
    raise UserError(f"nothing to encode: the {split!r} split is empty")
  process, processes = jax.process_index(), jax.process_count()
  options = pipeline.PipelineOptions(batch_size=batch_size,
                                     shuffle=False,
                                     num_epochs=1,
                                     drop_remainder=False,
                                     shard_index=process,
                                     shard_count=processes)
  tokenizer = exp.text.tokenizer if exp.text else None
  dataset = pipeline.build_dataset(_Head(source, total), options,
                                   sources.element_transforms(exp.data, tokenizer, training=False, keep=("caption",)))
  encode, captions = latent_encoder(exp), caption_embedder(config, text_model, t5)
  per_process = -(-pipeline.host_share(total, batch_size, 0, processes) // shard_size)  # host 0 has the most
  shards = _ShardWriter(out_dir, split, shard_size, per_process, processes)
  bar = tqdm.tqdm(total=pipeline.host_share(total, batch_size, process, processes),
                  desc=f"encoding {split}",
                  disable=not progress or process != 0)
  latent_shape = None
  try:
    for batch in dataset:
      lat = np.asarray(encode(jnp.asarray(batch["video"])))
      latent_shape = list(lat.shape[1:])
      emb = captions.embed([str(c) for c in batch["caption"]]) if captions else None
      for record in _records(batch, lat, emb):
        shards.write(record)
        bar.update(1)
  finally:
    shards.close()
    bar.close()
  written = shards.written
  if processes > 1:
    written = int(np.sum(multihost_utils.process_allgather(np.int64(written))))
  return _write_metadata(exp, out_dir, split, written, latent_shape, captions)


def _write_metadata(exp: experiment.Experiment, out_dir, split: str, written: int, latent_shape,
                    captions: CaptionEmbedder | None) -> dict:
  """metadata.json updated with this split (and the null embedding), by process 0."""
  metadata_path = out_dir / latents.METADATA
  metadata = fileio.read_json(metadata_path) if metadata_path.exists() else {"splits": {}}
  metadata.update({
      "video_shape": list(exp.example_shape),
      "latent_shape": latent_shape,
      "autoencoder": exp.autoencoder.to_dict(),
      "vocabulary": sources.caption_vocabulary(exp.data),
      "text_embeddings": captions is not None,
      "text_encoder": captions.source if captions else "",
      "source": exp.data.source
  })
  metadata["splits"][split] = written
  if distributed.is_primary():
    if captions is not None:
      fileio.save_npy(out_dir / latents.NULL_EMBEDDING, captions.null_embedding)
    fileio.write_json(metadata_path, metadata, overwrite=True)
  distributed.barrier(f"preencode wrote {out_dir}")
  return metadata


def main(argv):
  del argv
  cli.setup_logging()
  cli.start_distributed(FLAGS.multihost)  # before any backend exists
  metadata = preencode(cli.config_flag("config"), FLAGS.out_dir, FLAGS.split, FLAGS.num_examples, FLAGS.shard_size,
                       FLAGS.batch_size, FLAGS.text_model, FLAGS.t5)
  if distributed.is_primary():
    print(f"wrote {metadata['splits'][FLAGS.split]} clips of latents {metadata['latent_shape']} "
          f"to {FLAGS.out_dir}")


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["config", "out_dir"])
  cli.run(main)
