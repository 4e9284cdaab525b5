"""Device mesh and logical-axis sharding (the pjit model: `jax.jit` with NamedShardings).

Model code names logical axes only ("embed", "mlp", "heads", ...). This module turns the config's
mesh shape (axes data, fsdp, tensor) into a `Mesh`, maps logical axes to mesh axes with the
config's rules, and gives the NamedShardings of the train state and of batches. The same config
runs on one CPU, 8 simulated CPU devices, a GPU or a TPU pod slice.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from starflow_jax import axes
from starflow_jax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# logical axis -> mesh axis (None = replicated). Parameters are sharded FSDP-style along their
# model width and tensor-parallel along heads / MLP hidden units; activations inside the train
# step are split over the batch (data x fsdp) and over heads / MLP units (tensor).
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    (axes.BATCH, BATCH_AXES),
    (axes.EMBED, "fsdp"),
    (axes.MLP, "tensor"),
    (axes.HEADS, "tensor"),
    (axes.KV, None),
    (axes.QKV, None),
    (axes.PATCH, None),
    (axes.TEXT, None),
    (axes.NORM, None),
    (axes.CLASSES, None),
    (axes.VOCAB, None),
    (axes.LENGTH, None),
    (axes.BUCKETS, None),
    (axes.ACT_BATCH, BATCH_AXES),
    (axes.ACT_LENGTH, None),
    (axes.ACT_EMBED, None),
    (axes.ACT_HEADS, "tensor"),
    (axes.ACT_KV, None),
    (axes.ACT_MLP, "tensor"),
)


def mesh_shape_for(config_shape: Sequence[int], num_devices: int) -> tuple[int, int, int]:
  """Resolves a (data, fsdp, tensor) shape with at most one -1 ("the rest") for num_devices.

  A shape without -1 may use fewer devices than there are (the first ones), never more."""
  shape = list(config_shape)
  if len(shape) != 3:
    raise UserError(f"mesh shape {tuple(shape)} must have 3 entries (data, fsdp, tensor)")
  if shape.count(-1) > 1:
    raise UserError(f"mesh shape {tuple(shape)} may contain -1 at most once")
  if -1 in shape:
    known = int(np.prod([s for s in shape if s != -1]))
    if known <= 0 or num_devices % known:
      raise UserError(f"mesh shape {tuple(shape)} does not divide the {num_devices} devices; "
                      "choose sizes whose product divides the device count")
    shape[shape.index(-1)] = num_devices // known
  if int(np.prod(shape)) > num_devices:
    raise UserError(f"mesh shape {tuple(shape)} needs {int(np.prod(shape))} devices but "
                    f"{num_devices} are available; set config.mesh.shape so the product is at "
                    f"most {num_devices} (use -1 for one axis to take the rest)")
  return tuple(shape)


def make_mesh(config_shape: Sequence[int], devices: Sequence[Any] | None = None) -> Mesh:
  """The (data, fsdp, tensor) Mesh over `devices` (default: all)."""
  devices = list(devices if devices is not None else jax.devices())
  shape = mesh_shape_for(config_shape, len(devices))
  if int(np.prod(shape)) < len(devices):
    logging.info("mesh %s uses %d of %d devices", shape, int(np.prod(shape)), len(devices))
    devices = devices[:int(np.prod(shape))]
  try:
    device_array = jax.experimental.mesh_utils.create_device_mesh(shape, devices)
  except Exception:  # CPU / uneven topologies: plain reshape
    device_array = np.asarray(devices).reshape(shape)
  return Mesh(device_array, MESH_AXES)


def rules_from_config(rules) -> tuple[tuple[str, Any], ...]:
  """Config rules [(logical, mesh axis or list or None), ...] -> hashable tuple."""
  if rules is None:
    return DEFAULT_RULES
  return tuple((str(name), tuple(axis) if isinstance(axis, (list, tuple)) else axis) for name, axis in rules)


def _fit_spec(spec: P, shape: Sequence[int], mesh: Mesh, where: str) -> P:
  """Replicates dimensions that the assigned mesh axes do not divide (logged once per leaf)."""
  fitted, replicated = axes.fit_spec(spec, shape, mesh)
  for dim in replicated:
    logging.info("sharding: %s dim %d not divisible by mesh axes %s; replicated", where, dim, spec[dim])
  return fitted


def logical_shardings(boxed_tree, mesh: Mesh, rules) -> Any:
  """NamedShardings for a tree whose leaves may be flax LogicallyPartitioned boxes.

  Unboxed leaves (step counters, rng keys, optimizer counts) are replicated. The result has the
  structure of the unboxed tree (empty optimizer nodes such as optax's MaskedNode stay empty).
  """
  mesh_specs = nn.logical_to_mesh(nn.get_partition_spec(boxed_tree), rules)
  spec_by_path = {
      path: spec
      for path, spec in jax.tree_util.tree_flatten_with_path(mesh_specs, is_leaf=lambda x: isinstance(x, P))[0]
  }

  def to_sharding(path, leaf):
    spec = spec_by_path.get(path)
    spec = spec if isinstance(spec, P) else P()
    return NamedSharding(mesh, _fit_spec(spec, getattr(leaf, "shape", ()), mesh, jax.tree_util.keystr(path)))

  return jax.tree_util.tree_map_with_path(to_sharding, nn.unbox(boxed_tree))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batches are split along their first axis over (data, fsdp)."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_parallel_size(mesh: Mesh) -> int:
  return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def process_batch_block(mesh: Mesh, global_batch: int) -> tuple[int, int]:
  """(index, count): this process's devices hold rows [index * b, (index + 1) * b) of every
  global batch of `global_batch` rows, b = global_batch // count.

  Read off the batch sharding, not assumed from the process index: the data pipeline gives
  each host exactly the rows its devices own. Processes whose devices replicate the batch (a
  tensor axis across hosts) share a block."""
  indices = batch_sharding(mesh).addressable_devices_indices_map((global_batch,))
  if not indices:
    raise UserError(f"process {jax.process_index()} has no device in the mesh {dict(mesh.shape)}; "
                    "use a mesh over all devices (config.mesh.shape with -1, or sizes whose "
                    "product is jax.device_count())")
  rows = set()
  for index in indices.values():
    rows.update(range(*index[0].indices(global_batch)))
  start, stop = min(rows), max(rows) + 1
  size = stop - start
  if len(rows) != size or global_batch % size or start % size:
    raise UserError(f"the mesh {dict(mesh.shape)} gives process {jax.process_index()} rows "
                    f"{sorted(rows)} of each batch of {global_batch}, not one contiguous block; "
                    "order the mesh so each host's devices are adjacent along the batch axes")
  return start // size, global_batch // size


def global_batch_from_host(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles global arrays from this host's rows of the batch (`process_batch_block`)."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def bytes_per_device(shardings, shapes) -> dict[Any, int]:
  """Bytes each device would hold for arrays with these shapes/dtypes and shardings (abstract)."""
  per_device: dict[Any, int] = {}
  for sharding, leaf in zip(jax.tree_util.tree_leaves(shardings), jax.tree_util.tree_leaves(shapes)):
    shard_shape = sharding.shard_shape(leaf.shape)
    nbytes = int(np.prod(shard_shape)) * np.dtype(leaf.dtype).itemsize
    for device in sharding.device_set:
      per_device[device] = per_device.get(device, 0) + nbytes
  return per_device
