"""Training from pre-encoded latents end to end; how arrays are written. (Restoring onto other
meshes and process counts, damaged checkpoints and refused architectures: tests/test_multihost.py.)"""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl.testing import absltest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from data_pipeline import latents, preencode
from experiments.configs import tiny_video
from starflow_jax import checkpoint, sharding, train_loop


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


class ArrayWritesTest(absltest.TestCase):

  def test_arrays_below_and_above_the_replica_parallel_threshold_restore_bit_equal(self):
    """One replica writes a small replicated array whole, the replicas share a big one; both
    come back exactly, onto another sharding too."""
    mesh = sharding.make_mesh((2, 2, 2))
    rows = checkpoint.MIN_REPLICA_PARALLEL_BYTES // (4 * 8) + 8  # above it over 4 replicas
    tree = {
        "small": np.arange(96, dtype=np.float32).reshape(8, 12),
        "big": np.random.default_rng(0).standard_normal((rows, 64)).astype(np.float32),
    }
    placed = {k: jax.device_put(v, NamedSharding(mesh, P("fsdp"))) for k, v in tree.items()}  # 4 replicas
    path = os.path.join(self.create_tempdir().full_path, "arrays")
    checkpoint._checkpointer().save(path, ocp.args.Composite(arrays=ocp.args.StandardSave(placed)))
    handler = ocp.type_handlers.get_type_handler(jax.Array)
    self.assertEqual(handler._min_slice_bytes_for_replica_parallel, checkpoint.MIN_REPLICA_PARALLEL_BYTES)
    target = {
        k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=NamedSharding(mesh, P(None, "tensor")))
        for k, v in tree.items()
    }
    restored = checkpoint._checkpointer().restore(path, ocp.args.Composite(arrays=ocp.args.StandardRestore(target)))
    for key, value in tree.items():
      np.testing.assert_array_equal(np.asarray(restored["arrays"][key]), value, err_msg=key)


if __name__ == "__main__":
  absltest.main()
