"""Training from pre-encoded latents end to end. (Restoring onto other meshes and process counts,
damaged checkpoints and refused architectures: tests/test_multihost.py.)"""

import os

from absl.testing import absltest

from data_pipeline import latents, preencode
from experiments.configs import tiny_video
from starflow_jax import train_loop


class LatentTrainingTest(absltest.TestCase):

  def test_train_from_preencoded_latents_end_to_end(self):
    tmp = self.create_tempdir().full_path
    config = tiny_video.get_config("micro")
    config.mesh.update(shape=(1, 1, 1))
    preencode.preencode(config, os.path.join(tmp, "latents"), "train", num_examples=16, shard_size=8, progress=False)
    self.assertEqual(latents.read_metadata(os.path.join(tmp, "latents"))["splits"]["train"], 16)
    config.data.update(source="latents", latents_dir=os.path.join(tmp, "latents"))
    config.train.update(num_steps=4, warmup_steps=1)
    state = train_loop.train_and_evaluate(config, os.path.join(tmp, "run"))
    self.assertEqual(int(state.step), 4)
    self.assertEqual(int(state.skipped_steps), 0)
    self.assertTrue(os.path.isdir(os.path.join(tmp, "run", "model", "params")))


if __name__ == "__main__":
  absltest.main()
