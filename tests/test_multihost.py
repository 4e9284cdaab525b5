"""Multi-host for real on one machine: N processes on localhost joined by jax.distributed (gloo
CPU collectives), each with its own simulated CPU devices, running the same commands a pod runs.

One set of runs of the `micro` config on a (2, 2, 2) mesh, shared by the tests:
  A  1 process x 8 devices, 12 steps (the reference);
  B  2 processes x 4 devices, 12 steps, uninterrupted, with a sample grid at the end;
  C  2 processes x 4 devices, process 1 SIGKILLed after a checkpoint, then both restarted with
     the same command.
They share JAX's persistent compilation cache, as restarting pod jobs can.
"""

import hashlib
import json
import os
import shutil
import tempfile

import jax
import ml_collections
import numpy as np
from absl.testing import absltest

from data_pipeline import latents, preencode
from experiments.configs import tiny_video
from starflow_jax import checkpoint, experiment, metrics, sharding, train_loop
from starflow_jax.sampling import VideoSampler, options_from_defaults
from starflow_jax.train_checkpoint import checkpoint_directory
from tests import multiprocess

STEPS = 12
KEYS = ("loss", "loss_z", "loss_logdet", "denoiser_loss", "grad_norm")


def train_args(workdir: str, processes: int, *extra: str) -> list[str]:
  args = [
      "-m", "experiments.main", "--config=experiments/configs/tiny_video.py:micro", f"--workdir={workdir}",
      "--config.mesh.shape=(2,2,2)", "--config.train.drop_first_frame=0.0", *extra
  ]  # (one step program to compile per job; the drop schedule's resume is tests/test_train.py's)
  return args + (["--config.mesh.multihost=True"] if processes > 1 else [])


def committed_steps(workdir: str) -> list[int]:
  path = os.fspath(checkpoint_directory(workdir))
  return sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) else []


def flat_params(tree) -> dict[str, np.ndarray]:
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def micro_config() -> ml_collections.ConfigDict:
  config = tiny_video.get_config("micro")
  config.mesh.update(shape=(2, 2, 2))
  return config


class MultiHostTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls._tmp = tempfile.TemporaryDirectory(prefix="multihost_")
    tmp = cls._tmp.name
    cls.env = {"JAX_COMPILATION_CACHE_DIR": os.path.join(tmp, "jax_cache")}
    cls.a, cls.b, cls.c = (os.path.join(tmp, name) for name in ("a", "b", "c"))
    multiprocess.run(train_args(cls.a, 1), 1, 8, extra_env=cls.env)
    cls.b_job = multiprocess.run(train_args(cls.b, 2, f"--config.log.sample_every_steps={STEPS}",
                                            "--config.log.num_samples=2"),
                                 2,
                                 4,
                                 extra_env=cls.env)
    killed = multiprocess.start(train_args(cls.c, 2), 2, 4, extra_env=cls.env)
    logged = lambda: max([r["step"] for r in metrics.read_metrics(cls.c)] or [0])
    cls.killed_in_time = multiprocess.wait_until(lambda: any(s >= 4 for s in committed_steps(cls.c)) and logged() >= 5,
                                                 killed,
                                                 timeout=300)
    killed.kill(1)  # one host dies; the other then waits in a collective until it is killed too
    killed.kill()
    cls.steps_before_kill = logged()
    multiprocess.run(train_args(cls.c, 2), 2, 4, extra_env=cls.env)

  @classmethod
  def tearDownClass(cls):
    cls._tmp.cleanup()
    super().tearDownClass()

  def test_two_processes_train_as_one(self):
    one, two = metrics.read_metrics(self.a), metrics.read_metrics(self.b)
    self.assertEqual([r["step"] for r in one], list(range(1, STEPS + 1)))
    self.assertEqual([r["step"] for r in two], list(range(1, STEPS + 1)))
    for ra, rb in zip(one, two):
      for key in KEYS:
        self.assertAlmostEqual(ra[key], rb[key], delta=1e-5, msg=f"step {ra['step']} {key}")
    # Written once: one record per step, one sample grid, the model exported by both together.
    with open(os.path.join(self.b, metrics.METRICS_FILE)) as f:
      self.assertLen(f.read().splitlines(), STEPS)
    self.assertEqual(os.listdir(os.path.join(self.b, "samples")), [f"step_{STEPS:07d}.png"])
    logs = self.b_job.logs
    self.assertIn("samples at step 12", logs[0])
    self.assertNotIn("samples at step 12", logs[1])
    self.assertTrue(checkpoint.is_model_directory(os.path.join(self.b, "model")))

  def test_sigkill_one_process_then_restart_continues_exactly(self):
    self.assertTrue(self.killed_in_time, "the run ended before it could be killed")
    self.assertLess(self.steps_before_kill, STEPS)
    uninterrupted, resumed = metrics.read_metrics(self.b), metrics.read_metrics(self.c)
    self.assertEqual([r["step"] for r in resumed], list(range(1, STEPS + 1)))
    for rb, rc in zip(uninterrupted, resumed):
      for key in KEYS:
        self.assertEqual(rb[key], rc[key], f"step {rb['step']} {key}")

  def _restore(self, workdir: str, mesh: str, processes: int, devices: int) -> dict:
    out = os.path.join(self.create_tempdir().full_path, "restored.npz")
    multiprocess.run(["-m", "tests.multihost_probe", "restore", workdir, mesh, out],
                     processes,
                     devices,
                     extra_env=self.env)
    with np.load(out) as data:
      return {k: data[k] for k in data.files}

  def _assert_restores_bit_equal(self, workdir: str, mesh: str, processes: int, devices: int):
    restored = self._restore(workdir, mesh, processes, devices)
    self.assertEqual(int(restored.pop("__step__")), STEPS)
    self.assertEqual(json.loads(str(restored.pop("__data__"))), {"next_index": STEPS})
    bundle = checkpoint.load_bundle(os.path.join(workdir, "model"))  # the final params, exported
    expected = flat_params({"model": bundle.params, "text": bundle.text_params})
    self.assertEqual(sorted(restored), sorted(expected))
    for key, value in expected.items():
      np.testing.assert_array_equal(restored[key], value, err_msg=key)

  def test_two_process_checkpoint_restores_in_one_process_resharded(self):
    self._assert_restores_bit_equal(self.b, "4,1,2", processes=1, devices=8)

  def test_one_process_checkpoint_restores_in_two_processes_resharded(self):
    self._assert_restores_bit_equal(self.a, "1,4,2", processes=2, devices=4)

  def test_host_shards_are_disjoint_and_cover_the_epoch(self):
    prefix = os.path.join(self.create_tempdir().full_path, "shards")
    multiprocess.run(["-m", "tests.multihost_probe", "shards", prefix], 2, 4, extra_env=self.env)
    hosts = [json.load(open(f"{prefix}.{p}.json")) for p in range(2)]
    self.assertEqual([h["block"] for h in hosts], [[0, 2], [1, 2]])
    config = micro_config()
    config.data.shapes.update(num_examples=64)
    config.train.update(batch_size=8)
    iterator = iter(
        train_loop.build_train_data(experiment.Experiment.from_config(config), sharding.make_mesh((2, 2, 2))))
    reference = [
        [hashlib.sha1(np.ascontiguousarray(v).tobytes()).hexdigest() for v in next(iterator)["video"]] for _ in range(8)
    ]
    self.assertLen({h for batch in reference for h in batch}, 64)  # one epoch: every clip once
    for step, batch in enumerate(reference):  # host p holds rows [4p, 4p + 4) of global batch j
      self.assertEqual(hosts[0]["batches"][step] + hosts[1]["batches"][step], batch, f"step {step}")
    seen = [{h for batch in host["batches"] for h in batch} for host in hosts]
    self.assertEmpty(seen[0] & seen[1])

  def test_exported_model_samples_across_processes_and_writes_once(self):
    out = os.path.join(self.create_tempdir().full_path, "clip.gif")
    prompts = ["a red circle moving left", "a blue square moving up"]
    job = multiprocess.run([
        "-m", "experiments.sample", f"--workdir={self.b}", "--multihost", "--arrays", f"--out={out}", "--seed=3",
        *(f"--prompt={p}" for p in prompts)
    ],
                           2,
                           4,
                           extra_env=self.env)
    self.assertIn("wrote", job.logs[0])
    self.assertNotIn("wrote", job.logs[1])
    folder = os.path.dirname(out)
    self.assertEqual(sorted(os.listdir(folder)), ["clip.npz", "clip.png", "clip_0.gif", "clip_1.gif"])
    with np.load(os.path.join(folder, "clip.npz")) as data:
      two_processes = data["videos"]
    bundle = checkpoint.load_bundle(os.path.join(self.b, "model"))
    sampler = VideoSampler(bundle, options_from_defaults(bundle.sampling_defaults, progress=False))
    one_process = np.asarray(sampler.generate(prompts, bundle.sampling_defaults["num_frames"], seed=3))
    self.assertEqual(two_processes.shape, one_process.shape)
    # The batch split over 8 devices changes only the rounding of batched matmuls.
    np.testing.assert_allclose(two_processes, one_process, atol=1e-4)

  def test_preencoding_on_two_processes_writes_the_one_process_latents(self):
    tmp = self.create_tempdir().full_path
    args = lambda out: [
        "-m", "data_pipeline.preencode", "--config=experiments/configs/tiny_video.py:micro", f"--out_dir={out}",
        "--num_examples=20", "--shard_size=4", "--batch_size=3"
    ]
    multiprocess.run(args(os.path.join(tmp, "two")) + ["--multihost"], 2, 2, extra_env=self.env)
    preencode.preencode(tiny_video.get_config("micro"),
                        os.path.join(tmp, "one"),
                        num_examples=20,
                        shard_size=4,
                        batch_size=3,
                        progress=False)  # this process alone
    clips = []
    for name in ("one", "two"):
      source = latents.LatentSource(os.path.join(tmp, name))
      self.assertEqual(latents.read_metadata(os.path.join(tmp, name))["splits"], {"train": 20})
      clips.append(sorted((source[i]["caption"], source[i]["video"].tobytes()) for i in range(len(source))))
      shards = sorted(f for f in os.listdir(os.path.join(tmp, name)) if f.endswith(".array_record"))
      if name == "one":  # (several hosts number their shards in blocks; a block may end early)
        self.assertEqual(shards, [f"train-{i:05d}-of-00005.array_record" for i in range(5)])
    self.assertLen(clips[0], 20)
    self.assertEqual(clips[0], clips[1])  # the same clips, encoded bit for bit alike

  def test_restart_with_another_model_is_refused_and_checkpoints_kept(self):
    workdir = os.path.join(self.create_tempdir().full_path, "run")
    shutil.copytree(self.a, workdir)
    before = committed_steps(workdir)
    config = micro_config()
    config.model.update(channels=64)
    config.train.update(num_steps=16)
    with self.assertRaisesRegex(ValueError, "different model"):
      train_loop.train_and_evaluate(config, workdir)
    self.assertEqual(committed_steps(workdir), before)

  def test_damaged_latest_checkpoint_is_an_error_and_left_alone(self):
    workdir = os.path.join(self.create_tempdir().full_path, "run")
    shutil.copytree(self.a, workdir)
    state_dir = os.path.join(os.fspath(checkpoint_directory(workdir)), str(STEPS), "state")
    for root, _, files in os.walk(state_dir):  # truncate the array data
      for name in files:
        if name not in ("_METADATA", "_CHECKPOINT_METADATA", "commit_success.txt"):
          with open(os.path.join(root, name), "wb") as f:
            f.write(b"garbage")
    before = committed_steps(workdir)
    config = micro_config()
    config.train.update(num_steps=16)
    with self.assertRaisesRegex(ValueError, rf"cannot restore checkpoint step {STEPS} .*Nothing was overwritten"):
      train_loop.train_and_evaluate(config, workdir)
    self.assertEqual(committed_steps(workdir), before)
    self.assertTrue(os.path.isdir(state_dir))


if __name__ == "__main__":
  absltest.main()
