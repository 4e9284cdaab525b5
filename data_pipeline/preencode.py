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

import os

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from array_record.python import array_record_module
from jax.experimental import multihost_utils
from ml_collections import config_flags
import tqdm

from data_pipeline import latents, pipeline, sources
from experiments import cli
from starflow_jax import distributed, experiment, fileio
from starflow_jax.autoencoder import build_autoencoder
from starflow_jax.errors import UserError
from data_pipeline.pixels import pixels_to_unit

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


def preencode(config, out_dir: str, split: str = "train", num_examples: int | None = None,
              shard_size: int = 1000, batch_size: int = 32, text_model: str | None = None,
              t5: str | None = None, progress: bool = True) -> dict:
  """Writes the shards of one split and (re)writes metadata.json; returns the metadata.

  Collective in a multi-host run: every process calls it with the same arguments."""
  out_dir = fileio.as_path(out_dir)
  existing = latents.shard_paths(out_dir, split)
  if existing:
    raise FileExistsError(f"{out_dir} already has {len(existing)} shards of split {split!r}; remove "
                          "them first (nothing was overwritten)")
  distributed.barrier(f"preencode checked {out_dir}")
  out_dir.mkdir(parents=True, exist_ok=True)
  source = sources.build_source(config.data, split)
  total = min(len(source), num_examples or len(source))
  if total <= 0:
    raise UserError(f"nothing to encode: the {split!r} split is empty")
  text_config = experiment.text_config(config)
  tokenizer = text_config.tokenizer if text_config else None
  process, processes = jax.process_index(), jax.process_count()
  options = pipeline.PipelineOptions(batch_size=batch_size, shuffle=False, num_epochs=1,
                                     drop_remainder=False, shard_index=process, shard_count=processes)
  keep = ("caption",)
  dataset = pipeline.build_dataset(_Head(source, total), options,
                                   sources.element_transforms(config.data, tokenizer, training=False, keep=keep))
  mine = pipeline.host_share(total, batch_size, process, processes)
  ae_config = experiment.autoencoder_config(config)
  autoencoder = build_autoencoder(ae_config)
  encode = lambda video: autoencoder.encode(pixels_to_unit(video, None))
  if not getattr(autoencoder, "jit_inside", False):  # the WAN VAE compiles its own chunk steps
    encode = jax.jit(encode)
  embed = null_embedding = None
  if text_model:
    from starflow_jax import checkpoint
    from starflow_jax.text.encoder import TextEncoder
    bundle = checkpoint.load_bundle(text_model)
    if bundle.text_config is None:
      raise UserError(f"{text_model} has no built-in text encoder")
    tokenizer = bundle.text_config.tokenizer
    encoder = TextEncoder(bundle.text_config)
    embed = jax.jit(lambda ids: encoder.apply({"params": bundle.text_params}, ids))
    null_embedding = np.asarray(embed(jnp.asarray(tokenizer.encode_batch([""]))))[0]
  t5 = t5 or config.text.get("t5_path", "") or None
  if t5:
    from starflow_jax.text.t5 import T5TextEncoder
    t5_encoder = T5TextEncoder(t5, config.model.txt_size)
    embed_captions = lambda captions: np.asarray(t5_encoder(captions))
    null_embedding = np.asarray(t5_encoder([""]))[0]
  elif embed is not None:
    embed_captions = lambda captions: np.asarray(embed(jnp.asarray(tokenizer.encode_batch(captions))))
  else:
    embed_captions = None
  # Shards are numbered per process: process p writes shards [p * per_process, ...).
  per_process = -(-pipeline.host_share(total, batch_size, 0, processes) // shard_size)  # host 0 has the most
  num_shards = per_process * processes
  written, shard, writer = 0, -1, None
  bar = tqdm.tqdm(total=mine, desc=f"encoding {split}", disable=not progress or process != 0)
  latent_shape = None
  try:
    for batch in dataset:
      lat = np.asarray(encode(jnp.asarray(batch["video"])))
      latent_shape = list(lat.shape[1:])
      emb = None
      if embed_captions is not None:
        emb = embed_captions([str(c) for c in batch["caption"]])
      for i in range(len(lat)):
        if written // shard_size != shard:
          if writer is not None:
            writer.close()
          shard += 1
          index = process * per_process + shard
          path = out_dir / f"{split}-{index:05d}-of-{num_shards:05d}.array_record"
          writer = array_record_module.ArrayRecordWriter(os.fspath(path), "group_size:1")
        record = {"latents": lat[i].astype(np.float32), "caption": str(batch["caption"][i])}
        if emb is not None:
          record["text_embeddings"] = emb[i].astype(np.float32)
        elif "tokens" in batch:
          record["tokens"] = batch["tokens"][i]
        if "label" in batch:
          record["label"] = np.int32(batch["label"][i])
        writer.write(latents.encode_record(record))
        written += 1
        bar.update(1)
  finally:
    if writer is not None:
      writer.close()
    bar.close()
  if processes > 1:
    written = int(np.sum(multihost_utils.process_allgather(np.int64(written))))
  metadata_path = out_dir / latents.METADATA
  metadata = fileio.read_json(metadata_path) if metadata_path.exists() else {"splits": {}}
  frames, height, width, channels = sources.example_shape(config.data)
  metadata.update({
      "video_shape": [frames, height, width, channels], "latent_shape": latent_shape,
      "autoencoder": ae_config.to_dict(), "vocabulary": sources.caption_vocabulary(config.data),
      "text_embeddings": embed_captions is not None, "text_encoder": t5 or text_model or "",
      "source": config.data.source})
  metadata["splits"][split] = written
  if distributed.is_primary():
    if null_embedding is not None:
      fileio.save_npy(out_dir / latents.NULL_EMBEDDING, null_embedding)
    fileio.write_json(metadata_path, metadata, overwrite=True)
  distributed.barrier(f"preencode wrote {out_dir}")
  return metadata


def main(argv):
  del argv
  cli.setup_logging()
  cli.start_distributed(FLAGS.multihost)  # before any backend exists
  metadata = preencode(cli.config_flag("config"), FLAGS.out_dir, FLAGS.split, FLAGS.num_examples,
                       FLAGS.shard_size, FLAGS.batch_size, FLAGS.text_model, FLAGS.t5)
  if distributed.is_primary():
    print(f"wrote {metadata['splits'][FLAGS.split]} clips of latents {metadata['latent_shape']} "
          f"to {FLAGS.out_dir}")


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["config", "out_dir"])
  cli.run(main)
