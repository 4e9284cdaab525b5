"""Training checkpoints: restore onto another mesh, damaged checkpoints, training from latents."""

import os

import jax
import numpy as np
from absl.testing import absltest

from data_pipeline import latents, preencode
from experiments.configs import tiny_video
from starflow_jax import sharding, train_loop
from starflow_jax.train import Trainer
from starflow_jax.train_checkpoint import TrainCheckpointer, checkpoint_directory
from tests.test_train import make_batch, tiny_config


class ReshardTest(absltest.TestCase):

  def test_restore_onto_a_different_mesh(self):
    workdir = self.create_tempdir().full_path
    config = tiny_config()
    config.model.update(channels=64, top_block_channels=64)
    mesh_a = sharding.make_mesh((8, 1, 1))
    trainer = Trainer(config, mesh_a)
    state = trainer.init_state(0)
    state, _ = trainer.step(state, make_batch(config, mesh_a))
    dataset = train_loop.build_train_data(config, trainer)
    iterator = iter(dataset)
    next(iterator)
    ckpt = TrainCheckpointer(workdir, every_steps=1, keep=2, async_save=True)
    ckpt.save(1, state, iterator, config, force=True)
    ckpt.close()
    saved = jax.device_get(state.params)

    mesh_b = sharding.make_mesh((2, 2, 2))
    trainer_b = Trainer(config, mesh_b)
    ckpt_b = TrainCheckpointer(workdir, every_steps=1, keep=2)
    restored = ckpt_b.restore(1, trainer_b.abstract_state, iter(train_loop.build_train_data(config, trainer_b)))
    kernel = restored.params["model"]["deep_block"]["layers_0"]["mlp"]["fc_in"]["kernel"]
    self.assertEqual(kernel.sharding, trainer_b.state_shardings.params["model"]["deep_block"]["layers_0"]["mlp"]["fc_in"]["kernel"])
    self.assertEqual(kernel.sharding.mesh.shape, {"data": 2, "fsdp": 2, "tensor": 2})
    jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(restored.params), saved)
    restored, m = trainer_b.step(restored, make_batch(config, mesh_b, seed=1))  # and it trains on
    self.assertTrue(np.isfinite(float(m["loss"])))
    ckpt_b.close()


class DamagedCheckpointTest(absltest.TestCase):

  def test_damaged_latest_checkpoint_is_an_error_and_left_alone(self):
    workdir = self.create_tempdir().full_path
    config = tiny_video.get_config("micro")
    config.mesh.update(shape=(1, 1, 1))
    config.train.update(num_steps=8)
    train_loop.train_and_evaluate(config, workdir)
    step_dir = os.path.join(checkpoint_directory(workdir), "8")
    state_dir = os.path.join(step_dir, "state")
    for root, _, files in os.walk(state_dir):  # truncate the array data
      for name in files:
        if name not in ("_METADATA", "_CHECKPOINT_METADATA", "commit_success.txt"):
          with open(os.path.join(root, name), "wb") as f:
            f.write(b"garbage")
    before = sorted(os.listdir(checkpoint_directory(workdir)))
    config.train.update(num_steps=12)
    with self.assertRaisesRegex(ValueError, r"cannot restore checkpoint step 8 .*Nothing was overwritten"):
      train_loop.train_and_evaluate(config, workdir)
    self.assertEqual(sorted(os.listdir(checkpoint_directory(workdir))), before)
    self.assertTrue(os.path.isdir(state_dir))


class LatentTrainingTest(absltest.TestCase):

  def test_train_from_preencoded_latents_end_to_end(self):
    tmp = self.create_tempdir().full_path
    config = tiny_video.get_config("micro")
    config.mesh.update(shape=(1, 1, 1))
    preencode.preencode(config, os.path.join(tmp, "latents"), "train", num_examples=16, shard_size=8,
                        progress=False)
    self.assertEqual(latents.read_metadata(os.path.join(tmp, "latents"))["splits"]["train"], 16)
    config.data.update(source="latents", latents_dir=os.path.join(tmp, "latents"))
    config.train.update(num_steps=4, warmup_steps=1)
    state = train_loop.train_and_evaluate(config, os.path.join(tmp, "run"))
    self.assertEqual(int(state.step), 4)
    self.assertEqual(int(state.skipped_steps), 0)
    self.assertTrue(os.path.isdir(os.path.join(tmp, "run", "model", "params")))


if __name__ == "__main__":
  absltest.main()
