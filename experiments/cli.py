"""Shared command-line glue for the entry points."""

import logging
import sys

from absl import logging as absl_logging


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
