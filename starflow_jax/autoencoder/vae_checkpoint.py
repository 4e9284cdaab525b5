"""Autoencoder directories: the causal VAE's config and parameters (orbax), written atomically."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn
import orbax.checkpoint as ocp

from starflow_jax import fileio
from starflow_jax.autoencoder.causal_vae import CausalVAE, CausalVAEConfig
from starflow_jax.errors import UserError


def save(directory: str, config: CausalVAEConfig, params, report: dict | None = None, overwrite: bool = False) -> str:
  items = {"params": ocp.args.StandardSave(jax.device_get(params)), "vae_config": ocp.args.JsonSave(config.to_dict())}
  if report:
    items["report"] = ocp.args.JsonSave(report)
  ckptr = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
  written = fileio.atomic_directory_write(directory, lambda p: ckptr.save(p, ocp.args.Composite(**items)), overwrite)
  return str(written)


def _readable(directory: str, read):
  try:
    return read()
  except FileNotFoundError:
    raise
  except Exception as e:
    raise UserError(f"{directory} is not a readable causal-VAE directory ({type(e).__name__}: {e}); "
                    "write one with `python -m experiments.train_vae`") from e


def load_config(directory: str) -> CausalVAEConfig:
  """The VAE's config alone (compression factors, channels), without reading its parameters."""
  ckptr = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
  return _readable(
      directory, lambda: CausalVAEConfig.from_dict(
          ckptr.restore(fileio.as_path(directory), ocp.args.Composite(vae_config=ocp.args.JsonRestore()))["vae_config"])
  )


def load(directory: str) -> tuple[CausalVAEConfig, dict]:
  config = load_config(directory)
  x = jnp.zeros((1, 1 + config.temporal_factor, config.spatial_factor, config.spatial_factor, config.in_channels))
  target = nn.unbox(
      jax.eval_shape(lambda: CausalVAE(config).init(jax.random.PRNGKey(0), x, jax.random.PRNGKey(1))["params"]))
  ckptr = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
  params = _readable(
      directory, lambda: ckptr.restore(fileio.as_path(directory),
                                       ocp.args.Composite(params=ocp.args.StandardRestore(target)))["params"])
  return config, params
