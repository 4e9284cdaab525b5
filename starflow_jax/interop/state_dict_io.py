"""Reading and writing state_dict files: `.safetensors` (read/write) and `.pth`/`.pt` (read)."""

from __future__ import annotations

import json
import os

import numpy as np
from safetensors.numpy import load_file, save_file

from starflow_jax.interop.torch_pickle import load_torch_state_dict


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """Loads a state_dict of numpy arrays from .safetensors or a torch.save .pth/.pt/.bin file."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"weights file {path} does not exist")
  if path.endswith(".safetensors"):
    return load_file(path)
  if path.endswith((".pth", ".pt", ".bin", ".ckpt")):
    obj = load_torch_state_dict(path)
    if not isinstance(obj, dict):
      raise ValueError(f"{path} holds a {type(obj).__name__}, not a state_dict; save "
                       "model.state_dict() rather than the model object")
    return obj
  raise ValueError(f"unknown weights format {path!r}: use .safetensors or .pth")


def read_hf_directory(directory: str, filename: str = "model.safetensors") -> dict[str, np.ndarray]:
  """The state_dict of a Hugging Face / diffusers folder: `filename` (e.g. model.safetensors,
  diffusion_pytorch_model.safetensors) or its sharded `<filename stem>.safetensors.index.json`."""
  single = os.path.join(directory, filename)
  index = os.path.join(directory, filename + ".index.json")
  if os.path.isfile(single):
    return load_file(single)
  if os.path.isfile(index):
    with open(index) as f:
      files = sorted(set(json.load(f)["weight_map"].values()))
    out = {}
    for name in files:
      out.update(load_file(os.path.join(directory, name)))
    return out
  raise FileNotFoundError(f"{directory} has neither {filename} nor {filename}.index.json; download the "
                          "checkpoint's safetensors first (see WORKSPACE.md)")


def write_safetensors(path: str, state_dict: dict[str, np.ndarray], overwrite: bool = False,
                      metadata: dict[str, str] | None = None) -> None:
  """Writes a .safetensors file atomically; refuses to replace an existing file unless overwrite."""
  if not path.endswith(".safetensors"):
    raise ValueError(f"output {path!r} must end in .safetensors")
  if os.path.exists(path) and not overwrite:
    raise FileExistsError(f"{path} already exists; choose another --out or pass --overwrite")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, tmp, metadata=metadata)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
