"""Sharded train steps on simulated 8-device meshes equal the single-device step; the 7B config
shards its parameters and optimizer state so that no device holds more than its share."""

import jax
import numpy as np
from absl.testing import absltest, parameterized

from experiments.configs import starflow_v_7b_t2v_480p
from starflow_jax import sharding
from starflow_jax.train import Trainer
from tests.test_train import make_batch, tiny_config


def _run(config, mesh):
  """One train step (flow loss + denoiser) from the same initial state; loss and new params."""
  trainer = Trainer(config, mesh)
  state = trainer.init_state(0)
  state, m = trainer.step(state, make_batch(config, mesh))
  return [float(m["loss"]), float(m["denoiser_loss"])], jax.device_get(state.params)


class ShardedStepTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    assert jax.device_count() == 8, "tests/conftest.py sets 8 simulated CPU devices"
    cls.config = tiny_config()
    cls.config.model.update(channels=64, top_block_channels=64)
    cls.reference = _run(cls.config, sharding.make_mesh((1, 1, 1), jax.devices()[:1]))

  @parameterized.parameters((8, 1, 1), (2, 4, 1), (2, 2, 2))
  def test_same_loss_and_params_as_one_device(self, *shape):
    config = tiny_config()
    config.model.update(channels=64, top_block_channels=64)
    mesh = sharding.make_mesh(shape)
    trainer = Trainer(config, mesh)
    kernel = trainer.state_shardings.params["model"]["deep_block"]["layers_0"]["mlp"]["fc_in"]["kernel"]
    if shape[1] > 1:  # parameters really are split over the fsdp axis
      self.assertIn("fsdp", kernel.spec[0] if isinstance(kernel.spec[0], tuple) else (kernel.spec[0],))
    losses, params = _run(config, mesh)
    ref_losses, ref_params = self.reference
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-5)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                           params, ref_params)


class SevenBShardingTest(parameterized.TestCase):

  @parameterized.parameters((1, 8, 1), (2, 2, 2))
  def test_no_device_holds_more_than_its_share(self, *shape):
    config = starflow_v_7b_t2v_480p.get_config()
    config.mesh.update(shape=shape)
    mesh = sharding.make_mesh(shape)
    trainer = Trainer(config, mesh)  # abstract only: jax.eval_shape, nothing is allocated
    state = trainer.abstract_state
    param_count = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(state.params))
    self.assertGreater(param_count, 6e9)
    per_device = sharding.bytes_per_device(trainer.state_shardings, state)
    total = sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(state))
    share = total / 8
    self.assertLen(per_device, 8)
    # Model-parallel axes: fsdp x tensor = 8 (1,8,1) or 4 (2,2,2); data replicas hold copies.
    model_parallel = shape[1] * shape[2]
    expected = total / model_parallel
    worst = max(per_device.values())
    self.assertLess(worst, expected * 1.01, f"worst device {worst / 2**30:.2f} GiB vs {expected / 2**30:.2f}")
    self.assertGreaterEqual(worst, share)


if __name__ == "__main__":
  absltest.main()
