"""Shared command-line glue for the entry points: logging, the multi-host launch flags, and the
rule that a user's mistake is one line on stderr (`error: ...`, exit status 2), not a traceback."""

from __future__ import annotations

import logging
import sys
from typing import Callable

from absl import app, flags
from absl import logging as absl_logging

from starflow_jax import distributed
from starflow_jax.errors import UserError

FLAGS = flags.FLAGS
USER_ERROR_STATUS = 2


def setup_logging() -> None:
  """Our messages at INFO on stderr; libraries (orbax, grain) only from WARNING up."""
  absl_logging.set_verbosity(absl_logging.WARNING)
  ours = logging.getLogger("starflow_jax")
  if not ours.handlers:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[starflow_jax] %(message)s"))
    ours.addHandler(handler)
  ours.setLevel(logging.INFO)
  ours.propagate = False


def define_launch_flags() -> None:
  """--coordinator_address / --num_processes / --process_id (default: the JAX_* variables,
  then JAX's cluster auto-detection; see starflow_jax.distributed)."""
  flags.DEFINE_string("coordinator_address", None, "multi-host: process 0's HOST:PORT "
                      f"(default ${distributed.ENV_COORDINATOR} or auto-detected)")
  flags.DEFINE_integer("num_processes", None, "multi-host: number of processes "
                       f"(default ${distributed.ENV_NUM_PROCESSES} or auto-detected)")
  flags.DEFINE_integer("process_id", None, "multi-host: this process's rank "
                       f"(default ${distributed.ENV_PROCESS_ID} or auto-detected)")


def start_distributed(requested: bool = False) -> bool:
  """Starts jax.distributed for a multi-host launch; call before anything touches JAX."""
  launch = distributed.launch_from(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  return distributed.initialize(requested, launch)


def run(main: Callable, user_errors: tuple[type[BaseException], ...] = ()) -> None:
  """absl's app.run(main), with a UserError (and `user_errors`) printed as one line, exit 2."""
  try:
    app.run(main)
  except (UserError, *user_errors) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(USER_ERROR_STATUS)
