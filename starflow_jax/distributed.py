"""Multi-host runs: start `jax.distributed` before anything touches a backend, and the few
collective helpers the rest of the code needs (one writer, barriers, gathering results).

Every host runs the same command. Which process is which comes from, in order:
  1. flags (`--coordinator_address`, `--num_processes`, `--process_id` of the commands),
  2. the standard variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID,
  3. JAX's cluster auto-detection (Cloud TPU, SLURM, Open MPI, Kubernetes) for what is unset.
On CPU the cross-process collectives are gloo's. A single-process run never calls
`jax.distributed.initialize`, so nothing here costs a laptop anything.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils

from starflow_jax.errors import UserError

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Launch:
  """Where this process sits in a multi-host job; None = left to JAX's auto-detection."""

  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None

  @property
  def given(self) -> bool:
    return any(v is not None for v in dataclasses.astuple(self))


def _int_or_none(value, name: str) -> int | None:
  if value is None or value == "":
    return None
  try:
    return int(value)
  except (TypeError, ValueError):
    raise UserError(f"{name}={value!r} must be an integer") from None


def launch_from(coordinator_address: str | None = None,
                num_processes: int | None = None,
                process_id: int | None = None,
                environ: Mapping[str, str] = os.environ) -> Launch:
  """Flags first, then the JAX_* environment variables; validated."""
  launch = Launch(
      coordinator_address or environ.get(ENV_COORDINATOR) or None,
      _int_or_none(num_processes if num_processes is not None else environ.get(ENV_NUM_PROCESSES),
                   "num_processes (--num_processes or JAX_NUM_PROCESSES)"),
      _int_or_none(process_id if process_id is not None else environ.get(ENV_PROCESS_ID),
                   "process_id (--process_id or JAX_PROCESS_ID)"))
  if launch.num_processes is not None and launch.num_processes < 1:
    raise UserError(f"num_processes={launch.num_processes} must be >= 1")
  if launch.process_id is not None and launch.num_processes is not None and not (0 <= launch.process_id <
                                                                                 launch.num_processes):
    raise UserError(f"process_id={launch.process_id} must be in [0, num_processes="
                    f"{launch.num_processes}); give each host its own rank")
  if launch.coordinator_address is not None and ":" not in launch.coordinator_address:
    raise UserError(f"coordinator_address={launch.coordinator_address!r} must be HOST:PORT "
                    "(process 0's address and a free port, the same on every host)")
  return launch


def wants_multihost(requested: bool, launch: Launch) -> bool:
  """Multi-host when asked for, or when the launch names more than one process."""
  return bool(requested) or (launch.num_processes or 1) > 1


def initialize(requested: bool = False, launch: Launch | None = None) -> bool:
  """Starts the distributed runtime if this is a multi-host run; returns whether it is one.

  Must run before any JAX call that creates a backend (jax.devices(), an array, a computation);
  the commands call it first thing. Idempotent.
  """
  launch = launch if launch is not None else launch_from()
  if jax.distributed.is_initialized():
    return True
  if not wants_multihost(requested, launch):
    return False
  from jax._src import xla_bridge  # the public API has no "is a backend up" query
  if xla_bridge.backends_are_initialized():
    raise RuntimeError("a JAX backend was created before jax.distributed.initialize(); start the "
                       "distributed runtime first (starflow_jax.distributed.initialize)")
  if launch.num_processes == 1:
    return False
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(launch.coordinator_address, launch.num_processes, launch.process_id)
  except ValueError as e:  # nothing given and no cluster environment detected
    raise UserError(f"cannot start a multi-host run ({e}). On Cloud TPU, SLURM, Open MPI or Kubernetes the "
                    f"launch is detected; elsewhere set {ENV_COORDINATOR}=HOST:PORT, {ENV_NUM_PROCESSES}=N "
                    f"and {ENV_PROCESS_ID}=RANK on every host (or the --coordinator_address, "
                    "--num_processes, --process_id flags)") from None
  log.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
           jax.local_device_count(), jax.device_count())
  return True


def is_primary() -> bool:
  """The process that writes files meant to exist once (metrics, samples, configs)."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process reaches this point (a no-op with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def gather_to_host(tree: Any) -> Any:
  """The whole of every array in `tree` as numpy on every process, however it is sharded.

  Collective: every process must call it with the same structure."""
  if jax.process_count() == 1:
    return jax.device_get(tree)

  def gather(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))

  return jax.tree_util.tree_map(gather, tree)


def every_process_value(value: int) -> list[int]:
  """`value` as each process holds it, in process order (all of them call this)."""
  if jax.process_count() == 1:
    return [int(value)]
  return [int(v) for v in np.asarray(multihost_utils.process_allgather(np.asarray(value, np.int64))).ravel()]


def broadcast_from_primary(value: Any) -> Any:
  """Process 0's value (numpy-convertible pytree) on every process."""
  if jax.process_count() == 1:
    return value
  return multihost_utils.broadcast_one_to_all(value)
