"""Block-wise Jacobi decoding: schedule, exact equivalence with sequential decoding at tau = 0."""

import functools

import jax
import numpy as np
from absl.testing import absltest, parameterized

from starflow_jax import decoding, inverse, jacobi, model as model_lib
from starflow_jax.jacobi import JacobiOptions
from starflow_jax.rope import TokenGrid
from tests import helpers


class ScheduleTest(absltest.TestCase):

  def test_official_block_sizes(self):
    # N = 16 tokens per frame, b = 4: size b while start <= N (so the block at 16 is still b).
    schedule = jacobi.block_schedule(0, 48, 16, JacobiOptions(block_size=4))
    self.assertEqual(schedule, [(0, 4), (4, 4), (8, 4), (12, 4), (16, 4), (20, 16), (36, 12)])
    self.assertEqual(jacobi.group_runs(schedule), [(0, 4, 5), (20, 16, 1), (36, 12, 1)])
    self.assertEqual(jacobi.group_runs(schedule, max_count=2), [(0, 4, 2), (8, 4, 2), (16, 4, 1), (20, 16, 1),
                                                                (36, 12, 1)])

  def test_bad_options(self):
    with self.assertRaisesRegex(ValueError, "block sizes must be positive"):
      JacobiOptions(block_size=0)
    with self.assertRaisesRegex(ValueError, "max_iter"):
      JacobiOptions(max_iter=0)


class EquivalenceTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("video_ours", False, 0, 0.0),
      ("video_reference", True, 1, 0.0),
      ("video_guided", False, 0, 1.5),
  )
  def test_tau_zero_equals_sequential(self, reference, extra_iters, guidance):
    config = helpers.tiny_video_config()
    params = helpers.random_params(config, std=0.1)
    z = jax.random.normal(jax.random.PRNGKey(3), (2, 3, 4, 4, 2))
    cond = helpers.random_condition(config, 2)
    seq = inverse.sample_sequential(config, params, z, cond, guidance=guidance)
    b = 2  # tokens per frame N = 4: blocks of 2, then 8 (crossing frames)
    # The official video-aware start needs one more iteration than the block size (see jacobi.py).
    run = functools.partial(inverse.sample_jacobi,
                            config,
                            params,
                            z,
                            cond,
                            guidance=guidance,
                            block_size=b,
                            threshold=0.0,
                            reference_compatible=reference)
    out = run(max_iter=4 * b + extra_iters)
    # The iteration has reached its fixed point: more iterations change nothing, bit for bit.
    np.testing.assert_array_equal(out, run(max_iter=4 * b + 8))
    # ... which is the sequential solution up to float32 rounding (values here reach ~17; the
    # sequential decoder itself moves ~7e-6 when only the batch size changes).
    np.testing.assert_allclose(out, seq, atol=4e-6 * float(np.abs(seq).max()))

  def test_iterations_and_early_stop(self):
    config = helpers.tiny_image_config()
    params = helpers.random_params(config, std=0.1)
    block = model_lib.deep_block(config)
    grid = TokenGrid(1, 4, 4)
    z = jax.random.normal(jax.random.PRNGKey(0), (2, 16, config.token_dim))

    @functools.partial(jax.jit, static_argnums=(0,))
    def run(options):
      return jacobi.jacobi_inverse(block,
                                   model_lib.deep_params(params),
                                   z,
                                   grid,
                                   options=options,
                                   return_iterations=True)

    exact, its = run(JacobiOptions(block_size=4, threshold=0.0, max_iter=4))
    np.testing.assert_array_equal(its, [4, 4, 4, 4])
    seq = jax.jit(lambda z: decoding.sequential_inverse(block, model_lib.deep_params(params), z, grid))(z)
    np.testing.assert_allclose(exact, seq, atol=1e-5)
    loose, its = run(JacobiOptions(block_size=4, threshold=1e-2, max_iter=32))
    self.assertLess(int(np.sum(its)), 16, its)  # the stop rule ended some blocks early
    self.assertTrue(np.all(np.asarray(its) >= 1), its)
    self.assertLess(float(np.abs(loose - seq).max()), 0.5)


class FallbackTest(parameterized.TestCase):
  """fallback_after = K: a block still changing after K iterations is finished token by token."""

  @parameterized.parameters((1, 0.0), (3, 1.5))
  def test_fallback_equals_sequential(self, after, guidance):
    config = helpers.tiny_video_config()
    params = helpers.random_params(config, std=0.1)
    block = model_lib.deep_block(config)
    grid = TokenGrid(3, 4, 4)  # N = 16 tokens per frame: blocks of 4 in frame 0, then 16
    z = jax.random.normal(jax.random.PRNGKey(4), (2, 48, config.token_dim))
    cond = helpers.random_condition(config, 2)
    cond, guidance = inverse.guided_condition(config, cond, None, guidance)
    deep = model_lib.deep_params(params)

    @functools.partial(jax.jit, static_argnums=(0,))
    def run(options):
      return jacobi.jacobi_inverse(block, deep, z, grid, cond, guidance, options=options, return_iterations=True)

    seq = jax.jit(lambda z: decoding.sequential_inverse(block, deep, z, grid, cond, guidance))(z)
    # tau = 0 never stops early: every block runs K iterations, then its other tokens one by one.
    out, its = run(JacobiOptions(block_size=4, threshold=0.0, fallback_after=after))
    sizes = [m for _, m in jacobi.block_schedule(0, 48, 16, JacobiOptions(block_size=4))]
    np.testing.assert_array_equal(its, sizes)  # K iterations + (m - K) single steps = m
    np.testing.assert_allclose(out, seq, atol=4e-6 * float(np.abs(seq).max()))
    # A loose threshold: blocks that converge within K iterations stop there, the rest fall back.
    loose, its = run(JacobiOptions(block_size=4, threshold=1e-2, fallback_after=after))
    self.assertTrue(np.all((np.asarray(its) <= after) | (np.asarray(its) == np.asarray(sizes))), its)
    self.assertLess(float(np.abs(loose - seq).max()), 0.5)

  def test_bad_fallback(self):
    with self.assertRaisesRegex(ValueError, "fallback_after"):
      JacobiOptions(fallback_after=0)
    with self.assertRaisesRegex(ValueError, "reference_compatible"):
      JacobiOptions(fallback_after=2, reference_compatible=True)


class ShardedJacobiTest(absltest.TestCase):

  def test_batch_sharded_over_devices_gives_the_same_samples(self):
    """The stop statistic is a mean over the global batch: with the batch split over 8 devices the
    compiled while_loop reduces it across devices and stops where the one-device run stops."""
    from jax.sharding import NamedSharding, PartitionSpec as P
    from starflow_jax import sharding
    config = helpers.tiny_video_config()
    params = helpers.random_params(config, std=0.1)
    z = np.asarray(jax.random.normal(jax.random.PRNGKey(3), (8, 3, 4, 4, 2)))
    cond = helpers.random_condition(config, 8)
    options = JacobiOptions(block_size=2, threshold=1e-3, reference_compatible=False)

    @jax.jit
    def sample(params, z, cond):
      """The Jacobi model inverse and the iterations of every Jacobi block of every flow block."""
      iterations = []

      def block_inverse(block, block_params, z, grid, cond, guidance, given=None):
        x, its = jacobi.jacobi_inverse(block,
                                       block_params,
                                       z,
                                       grid,
                                       cond,
                                       guidance,
                                       given,
                                       options=options,
                                       return_iterations=True)
        iterations.append(its)
        return x

      return inverse.invert(config, params, z, cond, guidance=1.5, block_inverse=block_inverse), iterations

    single, single_its = sample(params, z, cond)
    batch = NamedSharding(sharding.make_mesh((8, 1, 1)), P("data"))
    sharded, sharded_its = sample(params, jax.device_put(z, batch), jax.device_put(cond, batch))
    self.assertEqual(len(sharded.sharding.device_set), 8)
    # The discrete decisions, exactly: every Jacobi block stops after the same iteration.
    for single_block, sharded_block in zip(single_its, sharded_its):
      np.testing.assert_array_equal(sharded_block, single_block)
    self.assertGreater(int(np.sum(single_its[0])), 0)
    # What float32 rounding can do to this ill-conditioned inverse, measured here: move every
    # input by one ulp (the decisions unchanged) and see how far the samples go. A differently
    # ordered cross-device reduction is a rounding perturbation of that kind.
    rng = np.random.default_rng(0)
    spread = 0.0
    for _ in range(3):
      nudged = np.where(rng.random(z.shape) < 0.5, np.nextafter(z, np.inf), np.nextafter(z, -np.inf))
      moved, moved_its = sample(params, nudged.astype(np.float32), cond)
      for single_block, moved_block in zip(single_its, moved_its):
        np.testing.assert_array_equal(moved_block, single_block)
      spread = max(spread, float(np.abs(np.asarray(moved) - np.asarray(single)).max()))
    self.assertGreater(spread, 0.0)
    np.testing.assert_allclose(sharded, single, rtol=0, atol=4 * spread)


if __name__ == "__main__":
  absltest.main()
