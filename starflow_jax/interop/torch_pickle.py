"""Reads and writes PyTorch `.pth` / `.pt` state_dicts as numpy, without importing torch.

`torch.save` writes a zip archive: `<name>/data.pkl` (a pickle whose tensors refer to storages by
persistent id) and `<name>/data/<key>` (raw little-endian storage bytes). A restricted unpickler
rebuilds each tensor as a numpy array from its storage, offset, size and stride, and refuses every
other global, so loading an untrusted file cannot run code. `save_torch_state_dict` writes the
same layout (an OrderedDict of `torch._utils._rebuild_tensor_v2` calls on FloatStorage & co.,
records stored uncompressed), which `torch.load(..., weights_only=True)` reads.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile

import ml_dtypes
import numpy as np

from starflow_jax.errors import UserError

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_TORCH_DTYPES = {
    "float32": np.float32,
    "float": np.float32,
    "float64": np.float64,
    "double": np.float64,
    "float16": np.float16,
    "half": np.float16,
    "bfloat16": ml_dtypes.bfloat16,
    "int64": np.int64,
    "long": np.int64,
    "int32": np.int32,
    "int": np.int32,
    "int16": np.int16,
    "int8": np.int8,
    "uint8": np.uint8,
    "bool": np.bool_
}


class _StorageType:

  def __init__(self, dtype):
    self.dtype = np.dtype(dtype)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  if not size:
    return np.array(storage[storage_offset], copy=True)
  itemsize = storage.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(storage[storage_offset:],
                                         shape=tuple(size),
                                         strides=tuple(s * itemsize for s in stride))
  return np.array(view, copy=True)


def _rebuild_parameter(data, *unused):
  return data


class _Unpickler(pickle.Unpickler):

  def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
    super().__init__(file)
    self._archive = archive
    self._prefix = prefix

  def find_class(self, module, name):
    if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
      return _rebuild_tensor
    if module == "torch._utils" and name == "_rebuild_parameter":
      return _rebuild_parameter
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(_STORAGE_DTYPES[name])
    if module == "torch" and name in _TORCH_DTYPES:
      return np.dtype(_TORCH_DTYPES[name])
    if module == "collections" and name == "OrderedDict":
      return collections.OrderedDict
    raise pickle.UnpicklingError(
        f"refusing to load {module}.{name} from a .pth file: only tensors and dicts of tensors "
        "are supported (save the model's state_dict(), or convert it to .safetensors)")

  def persistent_load(self, pid):
    kind, storage_type, key, _location, _numel = pid
    if kind != "storage":
      raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
    dtype = storage_type.dtype if isinstance(storage_type, _StorageType) else np.dtype(storage_type)
    raw = self._archive.read(f"{self._prefix}/data/{key}")
    return np.frombuffer(raw, dtype=dtype)


def load_torch_state_dict(path) -> dict:
  """Returns the pickled object of a zip-format `torch.save` file (a local filename or a binary
  file object) with tensors as numpy arrays."""
  if not zipfile.is_zipfile(path):
    raise UserError(f"{path} is not a zip-format torch.save file (legacy pre-1.6 format or not a "
                    "checkpoint); re-save it with a recent PyTorch or convert it to .safetensors")
  try:
    with zipfile.ZipFile(path) as archive:
      pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
      if not pickles:
        raise UserError(f"{path}: no data.pkl inside; not a torch.save file")
      prefix = pickles[0].rsplit("/", 1)[0] if "/" in pickles[0] else ""
      with archive.open(pickles[0]) as f:
        return _Unpickler(f, archive, prefix).load()
  except (zipfile.BadZipFile, EOFError, KeyError, ValueError, pickle.UnpicklingError) as e:
    if isinstance(e, UserError):
      raise
    raise UserError(f"{path} is a damaged torch.save file ({type(e).__name__}: {e}); download or save "
                    "it again, or convert it to .safetensors") from None


class _TorchGlobal:
  """A reference to `module.name` in the pickle (torch need not be importable here)."""

  def __init__(self, module: str, name: str):
    self.module, self.name = module, name

  def __call__(self, *args):  # pickle wants a reduce function to be callable; this one is written only
    raise TypeError(f"{self.module}.{self.name} is a reference for a pickle, not a function")


class _Storage:

  def __init__(self, key: str, array: np.ndarray):
    self.key, self.array = key, array


class _Tensor:
  """Pickles as torch's `_rebuild_tensor_v2(storage, 0, size, stride, False, OrderedDict())`."""

  def __init__(self, key: str, array: np.ndarray):
    self.storage, self.shape = _Storage(key, array), array.shape
    self.stride = tuple(s // array.itemsize for s in array.strides) if array.ndim else ()

  def __reduce__(self):
    rebuild = _TorchGlobal("torch._utils", "_rebuild_tensor_v2")
    return rebuild, (self.storage, 0, self.shape, self.stride, False, collections.OrderedDict())


class _Pickler(pickle._Pickler):  # the Python pickler: its dispatch table can name torch's globals
  dispatch = dict(pickle._Pickler.dispatch)

  def persistent_id(self, obj):
    if isinstance(obj, _Storage):
      storage = _TorchGlobal("torch", _STORAGE_NAMES[obj.array.dtype])
      return ("storage", storage, obj.key, "cpu", obj.array.size)
    return None

  def _save_torch_global(self, obj: _TorchGlobal) -> None:
    self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("utf-8"))

  dispatch[_TorchGlobal] = _save_torch_global


_STORAGE_NAMES = {np.dtype(dtype): name for name, dtype in _STORAGE_DTYPES.items()}


def save_torch_state_dict(path, state_dict: dict[str, np.ndarray], name: str = "archive") -> None:
  """Writes `state_dict` ({key: array}) as a zip-format `torch.save` file at `path` (a local
  filename or a binary file object)."""
  arrays = collections.OrderedDict()
  for key, value in state_dict.items():
    array = np.asarray(value, order="C")  # (ascontiguousarray would make scalars 1-d)
    if array.dtype not in _STORAGE_NAMES:
      raise UserError(f"{key}: dtype {array.dtype} has no torch storage type")
    arrays[key] = array
  tensors = collections.OrderedDict((key, _Tensor(str(i), a)) for i, (key, a) in enumerate(arrays.items()))
  buffer = io.BytesIO()
  _Pickler(buffer, protocol=2).dump(tensors)
  with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
    archive.writestr(f"{name}/data.pkl", buffer.getvalue())
    archive.writestr(f"{name}/byteorder", "little")
    for tensor in tensors.values():
      archive.writestr(f"{name}/data/{tensor.storage.key}", tensor.storage.array.tobytes())
    archive.writestr(f"{name}/version", "3\n")
