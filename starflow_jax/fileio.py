"""Paths and writes that never leave a half-written file behind, on local disks and `gs://`.

Every path the code stores or reads (workdirs, checkpoints, model directories, latents, media,
metrics) goes through `etils.epath`, as orbax and big_vision do, so `gs://bucket/run` works on a
pod unchanged; `os.path` is used only on paths that are local. A write goes to a temporary
sibling and is renamed (or, for a directory, moved) into place when complete; an existing
result is replaced only when asked, and only after its replacement is complete.

In a multi-host run `atomic_directory_write` is collective (orbax saves are): every process
calls it, each writes its part, process 0 moves the result into place. The other writers here
are called by one process (the primary) for files meant to exist once.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from typing import Any, Callable

import numpy as np
from etils import epath

from starflow_jax import distributed

PathLike = str | os.PathLike


def is_url(path: PathLike) -> bool:
  """True for `scheme://...` paths (gs://, s3://, ...), which must never meet os.path."""
  return "://" in os.fspath(path)


def as_path(path: PathLike) -> epath.Path:
  """An epath.Path; local paths made absolute (orbax wants absolute directories)."""
  if isinstance(path, epath.Path) and is_url(path):
    return path
  text = os.fspath(path)
  return epath.Path(text if is_url(text) else os.path.abspath(os.path.expanduser(text)))


def read_text(path: PathLike) -> str:
  return as_path(path).read_text()


def read_json(path: PathLike) -> Any:
  return json.loads(read_text(path))


def _refuse_existing(path: epath.Path, overwrite: bool) -> None:
  if not overwrite and path.exists():
    raise FileExistsError(f"{path} already exists; choose another name or pass --overwrite")


def write_file(path: PathLike, write: Callable[[str], Any], overwrite: bool = True, suffix: str = "") -> epath.Path:
  """Calls write(local_file) and moves the result to `path` when it returns.

  `write` gets a local filename ending in `suffix` (libraries such as ffmpeg need real files
  with the right extension); a remote `path` receives a copy of it."""
  path = as_path(path)
  _refuse_existing(path, overwrite)
  if is_url(path):
    with tempfile.TemporaryDirectory(prefix="starflow_write_") as local:
      local_file = os.path.join(local, "file" + suffix)
      write(local_file)
      path.parent.mkdir(parents=True, exist_ok=True)
      epath.Path(local_file).copy(path, overwrite=True)  # one object: appears whole or not at all
    return path
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}-{secrets.token_hex(3)}{suffix}"
  try:
    write(tmp)
    os.replace(tmp, os.fspath(path))
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


def write_bytes(path: PathLike, data: bytes, overwrite: bool = True) -> epath.Path:

  def write(local):
    with open(local, "wb") as f:
      f.write(data)

  return write_file(path, write, overwrite)


def write_text(path: PathLike, text: str, overwrite: bool = True) -> epath.Path:
  return write_bytes(path, text.encode("utf-8"), overwrite)


def write_json(path: PathLike, obj: Any, overwrite: bool = False) -> epath.Path:
  """JSON, atomically; refuses to replace a file unless overwrite."""
  return write_text(path, json.dumps(obj, indent=1), overwrite)


def save_npy(path: PathLike, array: np.ndarray, overwrite: bool = True) -> epath.Path:
  return write_file(path, lambda local: np.save(local, np.asarray(array)), overwrite, suffix=".npy")


def load_npy(path: PathLike) -> np.ndarray:
  with as_path(path).open("rb") as f:
    return np.load(f)


def atomic_directory_write(directory: PathLike,
                           write_fn: Callable[[epath.Path], Any],
                           overwrite: bool = False) -> epath.Path:
  """Calls write_fn(tmp_dir) and moves tmp_dir to `directory` when it returns.

  Refuses to replace an existing `directory` unless overwrite; even then the old one is
  removed only after the new one is complete. Collective in a multi-host run: all processes
  call it (write_fn runs on each: an orbax save), process 0 creates and moves the directories.
  """
  directory = as_path(directory)
  if directory.exists() and not overwrite:
    raise FileExistsError(f"{directory} already exists; choose another --out or pass --overwrite")
  token = int(distributed.broadcast_from_primary(np.int64(secrets.randbits(62))))
  staging = directory.parent / f".tmp-{directory.name}-{token:016x}"
  primary = distributed.is_primary()
  if primary:
    staging.mkdir(parents=True, exist_ok=True)
  distributed.barrier(f"staging {staging}")
  new = staging / "new"
  try:
    write_fn(new)
    distributed.barrier(f"written {staging}")
    if primary:
      if directory.exists():
        directory.rename(staging / "old")
      new.rename(directory)
  finally:
    if primary:
      _remove_tree(staging)
  distributed.barrier(f"moved {directory}")
  return directory


def _remove_tree(path: epath.Path) -> None:
  if not path.exists():
    return
  if is_url(path):
    path.rmtree()
  else:
    shutil.rmtree(os.fspath(path), ignore_errors=True)
