"""Orbax checkpoints of a model: its config and parameters in one directory.

A *model directory* (what `interop.convert official-to-jax` writes, what the sampler and the
trainer's `init_from` read) holds two orbax items: `params` (the parameter pytree) and
`model_config` (our ModelConfig as JSON). Writes go to a temporary sibling directory that is
renamed into place only when complete, so a failure never leaves a half-written checkpoint and
never replaces a good one. Training checkpoints (train state, data iterator) live in
`starflow_jax.train_checkpoint` and point to the same loaders here.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import jax
import orbax.checkpoint as ocp

from starflow_jax.config import ModelConfig

PARAMS_ITEM = "params"
CONFIG_ITEM = "model_config"


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
      old = os.path.join(tmp_parent, "old")
      os.rename(directory, old)
    os.rename(tmp, directory)
  finally:
    shutil.rmtree(tmp_parent, ignore_errors=True)
  return directory


def save_model(directory: str, config: ModelConfig, params, overwrite: bool = False) -> str:
  """Writes a model directory (orbax): params + model config. Returns its absolute path."""
  params = jax.device_get(params)

  def write(path):
    ckptr = _checkpointer()
    ckptr.save(path, ocp.args.Composite(**{
        PARAMS_ITEM: ocp.args.StandardSave(params),
        CONFIG_ITEM: ocp.args.JsonSave(config.to_dict())}))

  return atomic_directory_write(directory, write, overwrite)


def is_model_directory(path: str) -> bool:
  return os.path.isdir(os.path.join(path, PARAMS_ITEM)) and os.path.isdir(os.path.join(path, CONFIG_ITEM))


def read_model_config(path: str) -> ModelConfig:
  """The ModelConfig stored in a model directory."""
  ckptr = _checkpointer()
  try:
    restored = ckptr.restore(path, ocp.args.Composite(**{CONFIG_ITEM: ocp.args.JsonRestore()}))
  except Exception as e:  # orbax raises a variety of errors for damaged directories
    raise ValueError(f"{path}: cannot read the model config ({type(e).__name__}: {e}); the "
                     "directory is not a starflow_jax model checkpoint or it is damaged") from e
  return ModelConfig.from_dict(restored[CONFIG_ITEM])


def load_model(path: str, config: ModelConfig | None = None):
  """(config, params) from a model directory, checked against the config's parameter shapes.

  """
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"checkpoint directory {path} does not exist")
  if not is_model_directory(path):
    raise ValueError(f"{path} is not a model directory (it needs '{PARAMS_ITEM}/' and "
                     f"'{CONFIG_ITEM}/' written by starflow_jax.checkpoint.save_model)")
  config = config or read_model_config(path)
  return config, restore_params(path, config)


def restore_params(path: str, config: ModelConfig):
  """Restores params from `path` (model dir) with the structure and shapes `config` implies."""
  from starflow_jax.model import init_params
  target = jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))
  ckptr = _checkpointer()
  try:
    restored = ckptr.restore(path, ocp.args.Composite(**{PARAMS_ITEM: ocp.args.StandardRestore(target)}))
  except Exception as e:
    raise ValueError(f"{path}: the stored parameters do not match the model config "
                     f"({type(e).__name__}: {e}). The checkpoint is damaged or was written for a "
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
