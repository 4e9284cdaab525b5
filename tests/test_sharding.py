"""Sharded gradients on simulated 8-device meshes equal the single-device ones; the 7B config
shards its parameters and optimizer state so that no device holds more than its share."""

import re

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from experiments.configs import starflow_v_7b_t2v_480p
from starflow_jax import sharding
from starflow_jax.train import Trainer
from tests.test_train import assert_gradients_close, make_batch, tiny_config


def _config(**train):
  config = tiny_config(**train)
  config.model.update(channels=64, top_block_channels=64)
  return config


def _gradients(config, mesh):
  """The step's gradients and statistics at the initial state, and the trainer."""
  trainer = Trainer(config, mesh)
  grads, stats = trainer.gradients(trainer.init_state(0), make_batch(config, mesh))
  return trainer, grads, stats


class ShardedGradientTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    assert jax.device_count() == 8, "tests/conftest.py sets 8 simulated CPU devices"
    _, grads, stats = _gradients(_config(), sharding.make_mesh((1, 1, 1), jax.devices()[:1]))
    cls.reference = jax.device_get(grads), jax.device_get(stats)

  @parameterized.parameters(((2, 2, 2), 2), ((1, 8, 1), 1))
  def test_same_gradients_as_one_device(self, shape, accum_steps):
    """Data, fsdp and tensor axes (with 2 microbatches), and pure FSDP."""
    trainer, grads, stats = _gradients(_config(grad_accum_steps=accum_steps), sharding.make_mesh(shape))
    kernel = grads["model"]["deep_block"]["layers_0"]["mlp"]["fc_in"]["kernel"]
    axes = {a for entry in kernel.sharding.spec for a in (entry if isinstance(entry, tuple) else (entry,))}
    self.assertIn("fsdp", axes)  # really split over fsdp
    self.assertLen(kernel.sharding.device_set, 8)
    ref_grads, ref_stats = self.reference
    assert_gradients_close(self, jax.device_get(grads), ref_grads, rtol=1e-5)
    for key in ("loss", "loss_z", "loss_logdet", "denoiser_loss", "score_square"):
      np.testing.assert_allclose(stats[key], ref_stats[key], rtol=1e-5, err_msg=key)


class SevenBShardingTest(parameterized.TestCase):

  def test_activations_are_split_over_the_batch_not_replicated(self):
    """The 7B train step lowered on an abstract (1, 8, 1) mesh: every transformer layer's input,
    output, q/k/v and MLP hidden units carry a sharding constraint that splits the batch over
    (data, fsdp) (and heads / MLP units over tensor); no layer activation is left to the
    partitioner. Nothing is allocated or compiled."""
    config = starflow_v_7b_t2v_480p.get_config()
    config.mesh.update(shape=(1, 8, 1))
    config.train.update(batch_size=8)
    mesh = sharding.make_mesh((1, 8, 1))
    trainer = Trainer(config, mesh)
    model = trainer.model_config
    spec = sharding.batch_sharding(mesh)
    frames, side = 2, 4  # the constraints do not depend on the clip size
    batch = {
        "video": jax.ShapeDtypeStruct((8, frames, side, side, model.in_channels), jnp.float32, sharding=spec),
        "text_embeddings": jax.ShapeDtypeStruct((8, model.txt_size, model.txt_dim), jnp.float32, sharding=spec)
    }
    text = trainer.compiled_step(False).lower(trainer.abstract_state, batch).as_text()
    constraints = re.findall(r"sdy.sharding_constraint %\S+ <@mesh, \[(.*?)\]> : tensor<([0-9x]+)x", text)
    self.assertNotEmpty(constraints)
    widths = {model.channels, model.deep_channels}
    layer_io = [(dims, shape) for dims, shape in constraints if int(shape.split("x")[-1]) in widths]
    self.assertNotEmpty(layer_io)
    for dims, shape in constraints:
      self.assertTrue(dims.startswith('{"data", "fsdp"}'), f"tensor<{shape}x...>: [{dims}]")
    # The deep block's sequence (8 clips x its tokens, width 4096) and the shallow blocks' frames
    # (8 x 2 frames, width 3072) are both among them.
    self.assertIn(model.deep_channels, {int(shape.split("x")[-1]) for _, shape in layer_io})
    self.assertIn(model.channels, {int(shape.split("x")[-1]) for _, shape in layer_io})

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
