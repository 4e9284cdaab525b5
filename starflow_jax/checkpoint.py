"""Orbax model directories: everything needed to sample a trained model, in one directory.

A *model directory* (written by `interop.convert official-to-jax`, and by training as
`workdir/model`; read by the sampler, the converter and `train.init_from`) holds orbax items:
  params             {'model': StarFlow params, 'text': built-in text encoder params (optional)}
  model_config       our ModelConfig as JSON
  text_config        the built-in text encoder's config (optional; absent for imported models,
                     which take text embeddings from an external encoder such as Flan-T5)
  autoencoder_config the latent autoencoder (optional; identity when absent)
  sampling_defaults  training facts the sampler needs (noise_std, clip length, guidance; optional)
Writes go to a temporary sibling directory renamed into place only when complete, so a failure
never leaves a half-written directory and never replaces a good one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from starflow_jax.autoencoder import AutoencoderConfig
from starflow_jax.config import ModelConfig
from starflow_jax.model import init_params
from starflow_jax.text.encoder import TextEncoder, TextEncoderConfig

PARAMS_ITEM = "params"
CONFIG_ITEM = "model_config"
TEXT_ITEM = "text_config"
AUTOENCODER_ITEM = "autoencoder_config"
SAMPLING_ITEM = "sampling_defaults"


@dataclasses.dataclass
class ModelBundle:
  """A loaded model directory."""

  config: ModelConfig
  params: Any
  text_config: TextEncoderConfig | None = None
  text_params: Any = None
  autoencoder_config: AutoencoderConfig = dataclasses.field(default_factory=AutoencoderConfig)
  sampling_defaults: dict = dataclasses.field(default_factory=dict)


def _checkpointer() -> ocp.Checkpointer:
  return ocp.Checkpointer(ocp.CompositeCheckpointHandler())


def atomic_directory_write(directory: str, write_fn, overwrite: bool = False) -> str:
  """Calls write_fn(tmp_dir) and renames tmp_dir to `directory` when it returns.

  Refuses to replace an existing `directory` unless overwrite=True; even then the old one is
  removed only after the new one is complete.
  """
  directory = os.path.abspath(directory)
  if os.path.exists(directory) and not overwrite:
    raise FileExistsError(f"{directory} already exists; choose another --out or pass --overwrite")
  parent = os.path.dirname(directory)
  os.makedirs(parent, exist_ok=True)
  tmp_parent = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(directory) + "-", dir=parent)
  tmp = os.path.join(tmp_parent, "ckpt")
  try:
    write_fn(tmp)
    if os.path.exists(directory):
      os.rename(directory, os.path.join(tmp_parent, "old"))
    os.rename(tmp, directory)
  finally:
    shutil.rmtree(tmp_parent, ignore_errors=True)
  return directory


def save_model(directory: str, config: ModelConfig, params, overwrite: bool = False, *,
               text_config: TextEncoderConfig | None = None, text_params=None,
               autoencoder_config: AutoencoderConfig | None = None,
               sampling_defaults: dict | None = None) -> str:
  """Writes a model directory. Returns its absolute path."""
  tree = {"model": jax.device_get(params)}
  if text_params is not None:
    tree["text"] = jax.device_get(text_params)
  items = {PARAMS_ITEM: ocp.args.StandardSave(tree), CONFIG_ITEM: ocp.args.JsonSave(config.to_dict())}
  if text_config is not None:
    items[TEXT_ITEM] = ocp.args.JsonSave(text_config.to_dict())
  if autoencoder_config is not None:
    items[AUTOENCODER_ITEM] = ocp.args.JsonSave(autoencoder_config.to_dict())
  if sampling_defaults:
    items[SAMPLING_ITEM] = ocp.args.JsonSave(dict(sampling_defaults))
  return atomic_directory_write(directory, lambda path: _checkpointer().save(path, ocp.args.Composite(**items)),
                                overwrite)


def is_model_directory(path: str) -> bool:
  return os.path.isdir(os.path.join(path, PARAMS_ITEM)) and os.path.isdir(os.path.join(path, CONFIG_ITEM))


def _read_json_items(path: str) -> dict:
  names = [n for n in (CONFIG_ITEM, TEXT_ITEM, AUTOENCODER_ITEM, SAMPLING_ITEM)
           if os.path.isdir(os.path.join(path, n))]
  try:
    return _checkpointer().restore(path, ocp.args.Composite(**{n: ocp.args.JsonRestore() for n in names}))
  except Exception as e:  # orbax raises a variety of errors for damaged directories
    raise ValueError(f"{path}: cannot read the model configs ({type(e).__name__}: {e}); the "
                     "directory is not a starflow_jax model directory or it is damaged") from e


def load_bundle(path: str) -> ModelBundle:
  """Everything in a model directory, parameters checked against the configs' shapes."""
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"checkpoint directory {path} does not exist")
  if not is_model_directory(path):
    hint = ""
    if os.path.isdir(os.path.join(path, "model")):
      hint = f" (it looks like a training workdir: use {os.path.join(path, 'model')})"
    raise ValueError(f"{path} is not a model directory (it needs '{PARAMS_ITEM}/' and "
                     f"'{CONFIG_ITEM}/' written by starflow_jax.checkpoint.save_model){hint}")
  items = _read_json_items(path)
  config = ModelConfig.from_dict(items[CONFIG_ITEM])
  text_config = TextEncoderConfig.from_dict(items[TEXT_ITEM]) if TEXT_ITEM in items else None
  ae_config = AutoencoderConfig.from_dict(items[AUTOENCODER_ITEM]) if AUTOENCODER_ITEM in items else AutoencoderConfig()
  params = restore_params(path, config, text_config)
  return ModelBundle(config, params["model"], text_config, params.get("text"), ae_config,
                     dict(items.get(SAMPLING_ITEM, {})))


def load_model(path: str):
  """(ModelConfig, model params) from a model directory."""
  bundle = load_bundle(path)
  return bundle.config, bundle.params


def restore_params(path: str, config: ModelConfig, text_config: TextEncoderConfig | None = None):
  """Restores the params item with the structure and shapes the configs imply."""
  target = {"model": jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))}
  if text_config is not None:
    tokens = jnp.zeros((1, text_config.tokenizer.max_length), jnp.int32)
    target["text"] = nn.unbox(jax.eval_shape(
        lambda: TextEncoder(text_config).init(jax.random.PRNGKey(0), tokens)["params"]))
  try:
    restored = _checkpointer().restore(path, ocp.args.Composite(**{PARAMS_ITEM: ocp.args.StandardRestore(target)}))
  except Exception as e:
    raise ValueError(f"{path}: the stored parameters do not match the model config "
                     f"({type(e).__name__}: {e}). The directory is damaged or was written for a "
                     "different architecture.") from e
  return restored[PARAMS_ITEM]


def write_json(path: str, obj, overwrite: bool = False) -> None:
  """Atomically writes JSON (temp file + rename); refuses to replace a file unless overwrite."""
  if os.path.exists(path) and not overwrite:
    raise FileExistsError(f"{path} already exists; choose another name or pass --overwrite")
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)
