"""Reading and writing state_dict files: `.safetensors` (read/write) and `.pth`/`.pt` (read)."""

from __future__ import annotations

import io
import os

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as load_safetensors_bytes, save_file

from starflow_jax import fileio
from starflow_jax.errors import UserError
from starflow_jax.interop.torch_pickle import load_torch_state_dict, save_torch_state_dict


def load_safetensors(path) -> dict[str, np.ndarray]:
  """A .safetensors file (local or gs://) as numpy arrays."""
  path = fileio.as_path(path)
  try:
    if not fileio.is_url(path):
      from safetensors.numpy import load_file
      return load_file(os.fspath(path))
    return load_safetensors_bytes(path.read_bytes())
  except (SafetensorError, ValueError, OSError) as e:  # truncated, not safetensors, bad header
    raise UserError(f"{path} is not a readable .safetensors file ({type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else 'damaged'}); download or export it again") from None


def read_state_dict(path) -> dict[str, np.ndarray]:
  """Loads a state_dict of numpy arrays from .safetensors or a torch.save .pth/.pt/.bin file."""
  path = fileio.as_path(path)
  if not path.is_file():
    raise FileNotFoundError(f"weights file {path} does not exist")
  if path.suffix == ".safetensors":
    return load_safetensors(path)
  if path.suffix in (".pth", ".pt", ".bin", ".ckpt"):
    obj = load_torch_state_dict(io.BytesIO(path.read_bytes()) if fileio.is_url(path) else os.fspath(path))
    if not isinstance(obj, dict):
      raise UserError(f"{path} holds a {type(obj).__name__}, not a state_dict; save "
                      "model.state_dict() rather than the model object")
    return obj
  raise UserError(f"unknown weights format {path!r}: use .safetensors or .pth")


def read_hf_directory(directory, filename: str = "model.safetensors") -> dict[str, np.ndarray]:
  """The state_dict of a Hugging Face / diffusers folder (local or gs://): `filename` (e.g.
  model.safetensors, diffusion_pytorch_model.safetensors) or its sharded
  `<filename stem>.safetensors.index.json`."""
  directory = fileio.as_path(directory)
  single, index = directory / filename, directory / (filename + ".index.json")
  if single.is_file():
    return load_safetensors(single)
  if index.is_file():
    files = sorted(set(fileio.read_json(index)["weight_map"].values()))
    out = {}
    for name in files:
      out.update(load_safetensors(directory / name))
    return out
  raise FileNotFoundError(f"{directory} has neither {filename} nor {filename}.index.json; download the "
                          "checkpoint's safetensors first (see WORKSPACE.md)")


def write_safetensors(path,
                      state_dict: dict[str, np.ndarray],
                      overwrite: bool = False,
                      metadata: dict[str, str] | None = None) -> None:
  """Writes a .safetensors file atomically; refuses to replace an existing file unless overwrite."""
  if not os.fspath(path).endswith(".safetensors"):
    raise UserError(f"output {os.fspath(path)!r} must end in .safetensors")

  def write(local):
    save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, local, metadata=metadata)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(local, 0o666 & ~umask)

  fileio.write_file(path, write, overwrite=overwrite, suffix=".safetensors")


def write_pth(path, state_dict: dict[str, np.ndarray], overwrite: bool = False) -> None:
  """Writes a zip-format torch.save file (.pth) atomically, without torch (torch.load reads it,
  also with weights_only=True)."""
  if not os.fspath(path).endswith((".pth", ".pt")):
    raise UserError(f"output {os.fspath(path)!r} must end in .pth or .pt")
  fileio.write_file(path, lambda local: save_torch_state_dict(local, state_dict), overwrite=overwrite, suffix=".pth")


def write_state_dict(path, state_dict: dict[str, np.ndarray], overwrite: bool = False) -> None:
  """A state_dict as .safetensors or .pth, by the path's suffix."""
  if os.fspath(path).endswith((".pth", ".pt")):
    write_pth(path, state_dict, overwrite)
  else:
    write_safetensors(path, state_dict, overwrite)
