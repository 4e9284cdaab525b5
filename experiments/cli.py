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
  flags.DEFINE_integer(
      "num_processes", None, "multi-host: number of processes "
      f"(default ${distributed.ENV_NUM_PROCESSES} or auto-detected)")
  flags.DEFINE_integer("process_id", None, "multi-host: this process's rank "
                       f"(default ${distributed.ENV_PROCESS_ID} or auto-detected)")


def config_flag(name: str = "config"):
  """The ConfigDict of a config_flags flag; a config file that does not load is a UserError
  (ml_collections defers that failure to the first access)."""
  try:
    config = getattr(FLAGS, name)
    config.keys()  # a config that failed to load is a placeholder that raises here
    return config
  except OSError as e:
    raise UserError(" ".join(str(e).split()).replace(
        "Configuration is not available because of an "
        "earlier failure to load: ", "")) from None


def start_distributed(requested: bool = False) -> bool:
  """Starts jax.distributed for a multi-host launch; call before anything touches JAX."""
  launch = distributed.launch_from(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  return distributed.initialize(requested, launch)


def fail(message: str) -> None:
  """The one line a user's mistake gets, then exit status 2."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(USER_ERROR_STATUS)


def run(main: Callable, user_errors: tuple[type[BaseException], ...] = (FileNotFoundError, FileExistsError)) -> None:
  """absl's app.run(main); a bad flag, a config that does not load, a UserError (and
  `user_errors`: missing or existing paths, whose messages name them) print one line, exit 2.

  Flags are parsed once, by absl, with a parser whose errors are one line too (absl's own
  prints usage hints after them); every other exception keeps its traceback."""
  try:
    app.run(main, flags_parser=_parse_flags)
  except (UserError, *user_errors) as e:
    fail(str(e))


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    return FLAGS(argv)
  except flags.Error as e:
    fail(one_line(str(e)) or type(e).__name__)
  except (AttributeError, KeyError, TypeError, ValueError) as e:  # config_flags' override parser
    overrides = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
    fail(f"a config override cannot be applied ({type(e).__name__}: {one_line(str(e))}); check that "
         f"{', '.join(overrides) or 'each --config.* flag'} name fields the config has, with values of their type")


def one_line(message: str) -> str:
  """A library message as one line; one that embeds a traceback (config_flags does, for an
  error inside a config file's get_config) keeps its first line and the exception's."""
  lines = [line.strip() for line in message.splitlines() if line.strip()]
  if any(line.startswith("Traceback") for line in lines):
    return f"{lines[0]} {lines[-1]}"
  return " ".join(lines)
