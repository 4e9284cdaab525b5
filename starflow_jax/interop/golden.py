"""Golden folders from the official code: loading them, and the layout conversions they need.

A golden folder holds `config.json` (official Model kwargs under "model_kwargs"),
`weights.safetensors` (official state_dict) and `vectors.npz` (inputs and outputs, PyTorch
channels-first layout). See shared/golden/README.md.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np

from starflow_jax.config import ModelConfig
from starflow_jax.interop import official
from starflow_jax.interop.state_dict_io import read_state_dict
from starflow_jax.model import init_params


@dataclasses.dataclass
class GoldenFolder:
  path: str
  config: ModelConfig
  params: dict
  vectors: dict[str, np.ndarray]
  meta: dict


def load_golden(path: str) -> GoldenFolder:
  """Reads config.json, weights.safetensors and vectors.npz, importing the weights."""
  for name in ("config.json", "weights.safetensors", "vectors.npz"):
    if not os.path.isfile(os.path.join(path, name)):
      raise FileNotFoundError(f"golden folder {path} lacks {name}")
  with open(os.path.join(path, "config.json")) as f:
    meta = json.load(f)
  config = ModelConfig.from_official_kwargs(meta)
  shapes = jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))
  params = official.import_official(config, read_state_dict(os.path.join(path, "weights.safetensors")), shapes)
  with np.load(os.path.join(path, "vectors.npz")) as data:
    vectors = {k: data[k] for k in data.files}
  return GoldenFolder(path, config, params, vectors, meta)


def to_channels_last(x: np.ndarray) -> np.ndarray:
  """PyTorch [B, C, H, W] / [B, T, C, H, W] -> ours [B, H, W, C] / [B, T, H, W, C]."""
  return np.moveaxis(np.asarray(x), -3, -1)


def to_channels_first(x) -> np.ndarray:
  return np.moveaxis(np.asarray(x), -1, -3)
