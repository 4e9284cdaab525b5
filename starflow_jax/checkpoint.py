"""Orbax model directories: everything needed to sample a trained model, in one directory.

A *model directory* (written by `interop.convert official-to-jax`, and by training as
`workdir/model`; read by the sampler, the converter and `train.init_from`) holds orbax items:
  params             {'model': StarFlow params, 'text': built-in text encoder params (optional)}
  model_config       our ModelConfig as JSON
  text_config        the built-in text encoder's config (optional; absent for imported models,
                     which take text embeddings from an external encoder such as Flan-T5)
  autoencoder_config the latent autoencoder (optional; identity when absent)
  sampling_defaults  training facts the sampler needs (noise_std, clip length, guidance; optional)
Writes go to a temporary sibling directory moved into place only when complete, so a failure
never leaves a half-written directory and never replaces a good one. Paths may be local or
`gs://...` (etils.epath). In a multi-host run saving is collective: every process calls
`save_model` with the (possibly cross-host sharded) arrays and writes its own shards.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import Mesh, NamedSharding, PartitionSpec, SingleDeviceSharding

from starflow_jax import fileio
from starflow_jax.autoencoder import AutoencoderConfig
from starflow_jax.config import ModelConfig
from starflow_jax.errors import UserError
from starflow_jax.model import init_params
from starflow_jax.text.encoder import TextEncoder, TextEncoderConfig
from starflow_jax.text.t5 import T5Reference

PARAMS_ITEM = "params"
CONFIG_ITEM = "model_config"
TEXT_ITEM = "text_config"
AUTOENCODER_ITEM = "autoencoder_config"
SAMPLING_ITEM = "sampling_defaults"
NULL_ITEM = "null_condition"
T5_ITEM = "t5_encoder"


@dataclasses.dataclass
class ModelBundle:
  """A loaded model directory."""

  config: ModelConfig
  params: Any
  text_config: TextEncoderConfig | None = None
  text_params: Any = None
  autoencoder_config: AutoencoderConfig = dataclasses.field(default_factory=AutoencoderConfig)
  sampling_defaults: dict = dataclasses.field(default_factory=dict)
  # The condition the model was trained to treat as "no prompt" when it is not the default rule
  # (`model.null_condition`): the text encoder's empty prompt for pre-encoded text, [L, txt_dim].
  null_condition: Any = None
  # The frozen external text encoder the model reads prompts through (official models: Flan-T5).
  t5: T5Reference | None = None


# orbax writes a replicated array cooperatively, each replica a slice of it (replica-parallel),
# which pays for big arrays on many hosts; for a small one the per-slice device copies cost more
# than the write (a micro training run on 8 devices: 10.7 s, 6.6 s without). Below this many
# bytes per replica slice one replica writes the whole array. The files are the same either way.
MIN_REPLICA_PARALLEL_BYTES = 1 << 20


def configure_array_writes() -> None:
  """Registers orbax's jax.Array handler with the replica-parallel threshold (idempotent)."""
  handler = ocp.type_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=MIN_REPLICA_PARALLEL_BYTES)
  ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)


def _checkpointer() -> ocp.Checkpointer:
  configure_array_writes()
  return ocp.Checkpointer(ocp.CompositeCheckpointHandler())


def save_model(directory: str,
               config: ModelConfig,
               params,
               overwrite: bool = False,
               *,
               text_config: TextEncoderConfig | None = None,
               text_params=None,
               autoencoder_config: AutoencoderConfig | None = None,
               sampling_defaults: dict | None = None,
               null_condition=None,
               t5: T5Reference | None = None) -> str:
  """Writes a model directory (collectively in a multi-host run). Returns its path.

  `null_condition`: the model's own null condition [L, txt_dim] (see `ModelBundle`), if any.

  `params` may be numpy or jax arrays sharded in any way, also across hosts: each process
  writes the shards it holds, nothing is gathered onto one host."""
  tree = {"model": params}
  if text_params is not None:
    tree["text"] = text_params
  items = {PARAMS_ITEM: ocp.args.StandardSave(tree), CONFIG_ITEM: ocp.args.JsonSave(config.to_dict())}
  if text_config is not None:
    items[TEXT_ITEM] = ocp.args.JsonSave(text_config.to_dict())
  if autoencoder_config is not None:
    items[AUTOENCODER_ITEM] = ocp.args.JsonSave(autoencoder_config.to_dict())
  if sampling_defaults:
    items[SAMPLING_ITEM] = ocp.args.JsonSave(dict(sampling_defaults))
  if t5 is not None:
    items[T5_ITEM] = ocp.args.JsonSave(t5.to_dict())
  if null_condition is not None:
    items[NULL_ITEM] = ocp.args.StandardSave({"embedding": np.asarray(null_condition, np.float32)})
  written = fileio.atomic_directory_write(directory,
                                          lambda path: _checkpointer().save(path, ocp.args.Composite(**items)),
                                          overwrite)
  return os.fspath(written)


def is_model_directory(path: fileio.PathLike) -> bool:
  path = fileio.as_path(path)
  return (path / PARAMS_ITEM).is_dir() and (path / CONFIG_ITEM).is_dir()


def _read_json_items(path: epath.Path) -> dict:
  names = [n for n in (CONFIG_ITEM, TEXT_ITEM, AUTOENCODER_ITEM, SAMPLING_ITEM, T5_ITEM) if (path / n).is_dir()]
  try:
    return _checkpointer().restore(path, ocp.args.Composite(**{n: ocp.args.JsonRestore() for n in names}))
  except Exception as e:  # orbax raises a variety of errors for damaged directories
    raise UserError(f"{path}: cannot read the model configs ({type(e).__name__}: {e}); the "
                    "directory is not a starflow_jax model directory or it is damaged") from e


def load_bundle(path: fileio.PathLike) -> ModelBundle:
  """Everything in a model directory, parameters checked against the configs' shapes."""
  path = fileio.as_path(path)
  if not path.is_dir():
    raise FileNotFoundError(f"checkpoint directory {path} does not exist")
  if not is_model_directory(path):
    hint = ""
    if (path / "model").is_dir():
      hint = f" (it looks like a training workdir: use {path / 'model'})"
    raise UserError(f"{path} is not a model directory (it needs '{PARAMS_ITEM}/' and "
                    f"'{CONFIG_ITEM}/' written by starflow_jax.checkpoint.save_model){hint}")
  items = _read_json_items(path)
  config = ModelConfig.from_dict(items[CONFIG_ITEM])
  text_config = TextEncoderConfig.from_dict(items[TEXT_ITEM]) if TEXT_ITEM in items else None
  ae_config = AutoencoderConfig.from_dict(items[AUTOENCODER_ITEM]) if AUTOENCODER_ITEM in items else AutoencoderConfig()
  params = restore_params(path, config, text_config)
  null = None
  if (path / NULL_ITEM).is_dir():
    restored = _checkpointer().restore(path, ocp.args.Composite(**{NULL_ITEM: ocp.args.StandardRestore()}))
    null = np.asarray(restored[NULL_ITEM]["embedding"])
  t5 = T5Reference.from_dict(items[T5_ITEM]) if T5_ITEM in items else None
  return ModelBundle(config, params["model"], text_config, params.get("text"), ae_config,
                     dict(items.get(SAMPLING_ITEM, {})), null, t5)


def load_model(path: str):
  """(ModelConfig, model params) from a model directory."""
  bundle = load_bundle(path)
  return bundle.config, bundle.params


def restore_params(path: fileio.PathLike, config: ModelConfig, text_config: TextEncoderConfig | None = None):
  """Restores the params item with the structure and shapes the configs imply, on the default
  device (in a multi-host run: replicated over all devices), whatever mesh and process count
  wrote it."""
  target = {"model": jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))}
  if text_config is not None:
    tokens = jnp.zeros((1, text_config.tokenizer.max_length), jnp.int32)
    target["text"] = nn.unbox(
        jax.eval_shape(lambda: TextEncoder(text_config).init(jax.random.PRNGKey(0), tokens)["params"]))
  if jax.process_count() > 1:
    placement = NamedSharding(Mesh(np.asarray(jax.devices()), ("devices",)), PartitionSpec())
  else:
    placement = SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=placement), target)
  try:
    restored = _checkpointer().restore(fileio.as_path(path),
                                       ocp.args.Composite(**{PARAMS_ITEM: ocp.args.StandardRestore(target)}))
  except Exception as e:
    raise UserError(f"{path}: the stored parameters do not match the model config "
                    f"({type(e).__name__}: {e}). The directory is damaged or was written for a "
                    "different architecture.") from e
  return restored[PARAMS_ITEM]
