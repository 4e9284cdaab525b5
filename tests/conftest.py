"""Test setup: 8 simulated CPU devices (set before jax is imported) for the sharding tests, and
the test processes' XLA flags (tests/multiprocess.py)."""

import os

from tests.multiprocess import TEST_XLA_FLAGS

os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {TEST_XLA_FLAGS}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

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
