"""Test setup: 8 simulated CPU devices (set before jax is imported) for the sharding tests, the
test processes' XLA flags (tests/multiprocess.py), and one persistent compilation cache for the
whole run.

The tests compile far more than they compute, and compile the same programs again and again (each
sampler, trainer and command line builds its own jitted functions for the same tiny models). JAX's
persistent cache, keyed by the program, its devices and the flags, turns each repeat into a load:
one fresh directory per `pytest` run, shared by its xdist workers and the processes they start
(set here in the controller, before the workers exist), removed at the end."""

import atexit
import os
import shutil
import tempfile

from tests.multiprocess import TEST_XLA_FLAGS

os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {TEST_XLA_FLAGS}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="starflow_jax_test_cache_")
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ.update(JAX_COMPILATION_CACHE_DIR=_cache,
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")

import jax  # noqa: E402  (after the environment is set)

jax.config.update("jax_threefry_partitionable", True)

from absl import flags  # noqa: E402

# absltest helpers (create_tempdir, ...) read absl flags; pytest never parses them.
if not flags.FLAGS.is_parsed():
  flags.FLAGS.mark_as_parsed()

# The longest files first: `make test` runs `pytest -n 2 --dist loadfile`, which hands whole
# files (their setUpClass runs once) to whichever worker is free, in collection order.
LONGEST_FIRST = ("test_multihost.py", "test_train.py", "test_sampling.py")


def pytest_collection_modifyitems(config, items):
  del config
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))
