"""`gs://` paths without a network: epath's testing mock serves gs://bucket/... from a local
directory, and a guard fails the test if a URL ever reaches os.path or open (a path that was
treated as local). Covers what the code itself reads and writes; orbax's array data goes through
tensorstore's own GCS driver, which no mock reaches. Also how the MP4 writer starts ffmpeg."""

import builtins
import contextlib
import json
import os
import warnings
from unittest import mock

import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from etils.epath import testing as epath_testing

from data_pipeline import latents
from experiments import sample
from starflow_jax import fileio, media, metrics
from starflow_jax.train_checkpoint import checkpoint_directory

BUCKET = "gs://bucket"


@contextlib.contextmanager
def fake_bucket(root: str):
  """gs://bucket/X is root/X for every epath operation; URLs reaching os.* or open fail."""

  def local(path):
    path = os.fspath(path)
    return os.path.join(root, path[len(BUCKET) + 1:]) if path.startswith(BUCKET) else path

  def remote(path):
    return BUCKET + path[len(root):] if path.startswith(root) else path

  one = lambda fn, path, *a, **kw: fn(local(path), *a, **kw)
  two = lambda fn, path, dst, *a, **kw: fn(local(path), local(dst), *a, **kw)
  mocks = {
      name: one for name in ("exists", "isdir", "listdir", "makedirs", "mkdir", "open", "remove", "rmtree", "stat")
  }
  mocks.update(rename=two,
               replace=two,
               copy=two,
               glob=lambda fn, pattern: [remote(p) for p in fn(local(pattern))],
               walk=lambda fn, top, **kw: ((remote(d), ds, fs) for d, ds, fs in fn(local(top), **kw)))

  def guard(fn):

    def guarded(path, *args, **kwargs):
      if "gs:" in os.fspath(path) if isinstance(path, (str, os.PathLike)) else False:
        raise AssertionError(f"a URL reached {fn.__module__}.{fn.__name__}: {path}")
      return fn(path, *args, **kwargs)

    return guarded

  with contextlib.ExitStack() as stack:
    stack.enter_context(epath_testing.mock_epath(**mocks))
    for name in ("abspath", "exists", "isdir", "isfile", "dirname", "splitext"):
      stack.enter_context(mock.patch.object(os.path, name, guard(getattr(os.path, name))))
    stack.enter_context(mock.patch.object(os, "makedirs", guard(os.makedirs)))
    stack.enter_context(mock.patch.object(builtins, "open", guard(builtins.open)))
    yield


class RemotePathTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.root = self.create_tempdir().full_path
    self.enter_context(fake_bucket(self.root))

  def on_disk(self, relative: str) -> str:
    return os.path.join(self.root, relative)

  def test_paths_stay_urls(self):
    self.assertEqual(str(checkpoint_directory(f"{BUCKET}/run")), f"{BUCKET}/run/checkpoints")
    self.assertEqual(str(fileio.as_path(f"{BUCKET}/run/model")), f"{BUCKET}/run/model")
    self.assertTrue(fileio.is_url(fileio.as_path(f"{BUCKET}/x")))
    self.assertEqual(sample.output_paths(f"{BUCKET}/out/clip.mp4", 1),
                     (f"{BUCKET}/out/clip_1.mp4", f"{BUCKET}/out/clip_1.gif"))

  def test_atomic_writes_and_reads(self):
    fileio.write_json(f"{BUCKET}/run/config.json", {"a": 1})
    self.assertEqual(fileio.read_json(f"{BUCKET}/run/config.json"), {"a": 1})
    with self.assertRaisesRegex(FileExistsError, "already exists"):
      fileio.write_json(f"{BUCKET}/run/config.json", {"a": 2})
    self.assertEqual(json.load(open(self.on_disk("run/config.json"))), {"a": 1})  # kept
    fileio.save_npy(f"{BUCKET}/run/x.npy", np.arange(5))
    np.testing.assert_array_equal(fileio.load_npy(f"{BUCKET}/run/x.npy"), np.arange(5))

    def write_directory(path):
      (path / "params").mkdir(parents=True)
      (path / "params" / "data").write_text("new")

    fileio.atomic_directory_write(f"{BUCKET}/run/model", write_directory)
    with self.assertRaisesRegex(FileExistsError, "already exists"):
      fileio.atomic_directory_write(f"{BUCKET}/run/model", write_directory)
    fileio.atomic_directory_write(f"{BUCKET}/run/model", write_directory, overwrite=True)
    self.assertEqual(open(self.on_disk("run/model/params/data")).read(), "new")
    self.assertEqual(sorted(os.listdir(self.on_disk("run"))), ["config.json", "model", "x.npy"])  # no leftovers

  def test_metrics_media_and_loss_curve(self):
    writer = metrics.MetricWriter(f"{BUCKET}/run", tensorboard=False)
    for step in range(1, 4):
      writer.write_scalars(step, {"loss": 1.0 / step})
    writer.close()
    writer = metrics.MetricWriter(f"{BUCKET}/run", tensorboard=False)  # a resumed run appends
    writer.write_scalars(4, {"loss": 0.2})
    writer.close()
    self.assertEqual([r["step"] for r in metrics.read_metrics(f"{BUCKET}/run")], [1, 2, 3, 4])
    self.assertEqual(metrics.plot_loss_curve(f"{BUCKET}/run"), f"{BUCKET}/run/loss_curve.png")
    video = np.linspace(-1, 1, 4 * 8 * 8 * 3, dtype=np.float32).reshape(4, 8, 8, 3)
    media.save_gif(f"{BUCKET}/samples/a.gif", video)
    media.save_grid_png(f"{BUCKET}/samples/grid.png", video[None], ["a caption"])
    written = media.save_mp4(f"{BUCKET}/samples/a.mp4", video)
    expected = ["a.gif", "grid.png"] + (["a.mp4"] if written else [])
    self.assertEqual(sorted(os.listdir(self.on_disk("samples"))), sorted(expected))
    for name in ("run/loss_curve.png", "samples/grid.png"):
      with open(self.on_disk(name), "rb") as f:
        self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")

  def test_latents_directory(self):
    directory = self.on_disk("latents")
    os.makedirs(directory)
    with open(os.path.join(directory, latents.METADATA), "w") as f:
      json.dump({"splits": {"train": 2}, "video_shape": [1, 8, 8, 3]}, f)
    for name in ("train-00000-of-00002.array_record", "train-00001-of-00002.array_record",
                 "eval-00000-of-00001.array_record"):
      open(os.path.join(directory, name), "wb").close()
    np.save(os.path.join(directory, latents.NULL_EMBEDDING), np.ones((3, 4), np.float32))
    self.assertEqual(latents.read_metadata(f"{BUCKET}/latents")["splits"], {"train": 2})
    self.assertEqual(latents.shard_paths(f"{BUCKET}/latents", "train"),
                     [f"{BUCKET}/latents/train-0000{i}-of-00002.array_record" for i in range(2)])
    np.testing.assert_array_equal(latents.null_text_embedding(f"{BUCKET}/latents"), np.ones((3, 4)))
    with self.assertRaisesRegex(ValueError, "has no metadata.json"):
      latents.read_metadata(f"{BUCKET}/missing")


class LocalMediaTest(absltest.TestCase):

  def test_mp4_writer_starts_ffmpeg_without_a_python_callback_after_fork(self):
    # A preexec_fn runs Python in the forked child of a threaded (JAX) process: unsafe, and JAX
    # warns about it on every `make demo`. The writer must start ffmpeg without one.
    jnp.ones(2).block_until_ready()  # JAX's threads are running, as in the demo
    video = np.zeros((4, 16, 16, 3), np.float32)
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      written = media.save_mp4(os.path.join(self.create_tempdir().full_path, "a.mp4"), video)
    if written is None:
      self.skipTest("no ffmpeg binary here")
    self.assertEqual([str(w.message) for w in caught if "fork" in str(w.message)], [])


if __name__ == "__main__":
  absltest.main()
