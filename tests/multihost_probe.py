"""Run inside a (multi-process) job by tests/test_multihost.py:

  python -m tests.multihost_probe restore WORKDIR D,F,T OUT.npz   # latest checkpoint onto a mesh
  python -m tests.multihost_probe shards OUT_PREFIX                # the rows each host reads

`restore` writes (process 0) every restored parameter and the data iterator's position;
`shards` writes OUT_PREFIX.{process}.json with the hashes of the clips of each host batch.
"""

import hashlib
import json
import sys

import jax
import numpy as np

from starflow_jax import distributed

distributed.initialize()  # multi-host when the JAX_* variables say so; before any backend
jax.config.update("jax_threefry_partitionable", True)

import ml_collections  # noqa: E402

from experiments.configs import tiny_video  # noqa: E402
from starflow_jax import experiment, fileio, sharding, train_loop  # noqa: E402
from starflow_jax.train import Trainer  # noqa: E402
from starflow_jax.train_checkpoint import TrainCheckpointer  # noqa: E402


def flat(tree) -> dict[str, np.ndarray]:
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def restore(workdir: str, mesh_shape: str, out: str) -> None:
  config = ml_collections.ConfigDict(fileio.read_json(fileio.as_path(workdir) / "config.json"))
  config.mesh.shape = tuple(int(s) for s in mesh_shape.split(","))
  trainer = Trainer(config, sharding.make_mesh(config.mesh.shape))
  iterator = iter(train_loop.build_train_data(trainer.experiment, trainer.mesh))
  ckpt = TrainCheckpointer(workdir, config.checkpoint.every_steps, config.checkpoint.keep)
  step = ckpt.latest_step()
  state = ckpt.restore(step, trainer.abstract_state, iterator)
  params = distributed.gather_to_host(state.params)  # collective
  position = iterator.get_state()
  ckpt.close()
  if distributed.is_primary():
    np.savez(out, **flat(params), __step__=np.int64(step), __data__=json.dumps(position))


def shards(prefix: str) -> None:
  config = tiny_video.get_config("micro")
  config.data.shapes.update(num_examples=64)
  config.train.update(batch_size=8)
  config.mesh.update(shape=(2, 2, 2))
  mesh = sharding.make_mesh(config.mesh.shape)
  iterator = iter(train_loop.build_train_data(experiment.Experiment.from_config(config), mesh))
  batches = [[hashlib.sha1(np.ascontiguousarray(v).tobytes()).hexdigest()
              for v in next(iterator)["video"]]
             for _ in range(64 // 8)]
  record = {
      "process": jax.process_index(),
      "count": jax.process_count(),
      "block": sharding.process_batch_block(mesh, 8),
      "batches": batches
  }
  fileio.write_json(f"{prefix}.{jax.process_index()}.json", record, overwrite=True)


if __name__ == "__main__":
  {"restore": restore, "shards": shards}[sys.argv[1]](*sys.argv[2:])
