"""Training entry point.

  python -m experiments.main --config=experiments/configs/tiny_video.py --workdir=/tmp/run
  python -m experiments.main --config=experiments/configs/tiny_video.py:smoke --workdir=/tmp/run \
      --config.train.num_steps=50 --config.mesh.shape="(2,2,2)"

Any config field can be overridden on the command line (--config.a.b=value). Restarting the
same command in the same --workdir resumes from the latest checkpoint. Multi-host: run the same
command on every host with --config.mesh.multihost=True (ranks from JAX_COORDINATOR_ADDRESS /
JAX_NUM_PROCESSES / JAX_PROCESS_ID, the matching flags, or the cluster's auto-detection).
"""

import logging

from absl import app, flags
import jax
from ml_collections import config_flags

from experiments import cli
from starflow_jax import train_loop

FLAGS = flags.FLAGS


def define_flags():
  """Registers the flags of this command; called only when it runs as a program, so that
  every module can be imported into one process (tests) without clashing flag names."""
  config_flags.DEFINE_config_file("config", None, "experiment config file (path[:arg])", lock_config=True)
  flags.DEFINE_string("workdir", None, "directory for checkpoints, logs, samples and the exported model")
  flags.mark_flags_as_required(["config", "workdir"])
  cli.define_launch_flags()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cli.setup_logging()
  config = cli.config_flag("config")
  cli.start_distributed(config.mesh.get("multihost", False))  # before any backend exists
  jax.config.update("jax_threefry_partitionable", True)
  logging.getLogger("starflow_jax").info("process %d of %d; JAX devices: %s", jax.process_index(), jax.process_count(),
                                         jax.devices())
  train_loop.train_and_evaluate(config, FLAGS.workdir)


if __name__ == "__main__":
  define_flags()
  cli.run(main)
