"""experiments.score: exact per-frame likelihoods of clips under a model directory."""

import json
import os
import subprocess
import sys
import tempfile

import jax
import numpy as np
from absl.testing import absltest
from PIL import Image

from experiments import score
from starflow_jax import checkpoint, losses, media, model as model_lib
from tests import helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pixel_video_model(directory: str) -> checkpoint.ModelBundle:
  helpers.save_pixel_video_model(directory, num_frames=4)
  return checkpoint.load_bundle(directory)


class ScoreTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp()
    cls.model_dir = os.path.join(cls.tmp, "score_model")
    cls.bundle = pixel_video_model(cls.model_dir)
    cls.scorer = score.FrameScorer(cls.bundle)
    rng = np.random.default_rng(0)
    cls.clip = rng.uniform(-1, 1, (1, 4, 8, 8, 3)).astype(np.float32)

  def test_frames_are_the_causal_factorisation_of_the_clip(self):
    report = self.scorer.score(self.clip, None, noise_samples=2, seed=3)
    per_frame = np.array([f["nll_nats"] for f in report["frames"]])
    self.assertLen(per_frame, 4)
    np.testing.assert_allclose(per_frame.sum(), report["nll_nats"], rtol=1e-6)
    # The same numbers from the model's forward map directly (two draws averaged).
    x = np.asarray(self.clip)
    totals = []
    for k in range(2):
      noisy = x + 0.1 * np.asarray(jax.random.normal(jax.random.PRNGKey(3 + k), x.shape))
      out = model_lib.forward(self.bundle.config, self.bundle.params, noisy)
      totals.append(float(losses.total_nll(out.z, out.logdets)[0]))
    np.testing.assert_allclose(report["nll_nats"], np.mean(totals), rtol=1e-5)
    # A later frame replaced: the earlier frames' scores are unchanged, bit for bit.
    changed = self.clip.copy()
    changed[:, 3] = -changed[:, 3]
    other = self.scorer.score(changed, None, noise_samples=2, seed=3)
    self.assertEqual([f["nll_nats"] for f in other["frames"][:3]], list(per_frame[:3]))
    self.assertNotEqual(other["frames"][3]["nll_nats"], per_frame[3])
    dims = 8 * 8 * 3
    self.assertAlmostEqual(report["frames"][0]["bits_per_dim"], (per_frame[0] / dims + 7 * np.log(2)) / np.log(2),
                           places=4)

  def test_command_line_writes_the_report(self):
    clips = os.path.join(self.tmp, "clips")
    os.makedirs(clips, exist_ok=True)
    for i in range(2):
      media.save_gif(os.path.join(clips, f"c{i}.gif"), np.roll(self.clip[0], i, axis=1), min_side=8)
    out = os.path.join(self.tmp, "report.json")
    proc = run_score(f"--workdir={self.model_dir}", f"--input={clips}", f"--out={out}")
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    report = json.load(open(out))
    self.assertLen(report["clips"], 2)
    for clip in report["clips"].values():
      self.assertLen(clip["frames"], 4)
      self.assertGreater(clip["bits_per_dim"], 0)
      heat = np.asarray(clip["token_nll"])  # [T, h, w] per-token NLL, 8 x 8 frames in patches of 2
      self.assertEqual(heat.shape, (4, 4, 4))
      np.testing.assert_allclose(heat.sum(axis=(1, 2)), [f["nll_nats"] for f in clip["frames"]], rtol=1e-5)
      self.assertEqual(Image.open(clip["figure"]).format, "PNG")
    bad = run_score(f"--workdir={self.model_dir}", f"--input={os.path.join(self.tmp, 'missing.gif')}")
    self.assertEqual(bad.returncode, 2, bad.stderr[-2000:])
    self.assertIn("missing.gif does not exist", bad.stderr)


class DatasetScoreTest(absltest.TestCase):
  """--dataset: a split's NLL, batched and sharded as training is, against the model directly."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    from experiments.configs import tiny_video
    from starflow_jax import sharding
    from starflow_jax.train import Trainer
    cls.config = tiny_video.get_config("micro")
    cls.config.mesh.update(shape=(1, 1, 1))
    cls.one = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
    cls.eight = sharding.make_mesh((4, 2, 1), jax.devices()[:8])
    state = Trainer(cls.config, cls.one).init_state(seed=1)
    cls.params = jax.device_get(state.params)

  def score(self, config, mesh, **kwargs):
    from starflow_jax import evaluate
    return evaluate.dataset_nll(config, mesh, self.params["model"], self.params["text"], **kwargs)

  def test_every_example_is_scored_once_under_its_own_caption(self):
    """No noise, no dequantisation: 11 examples in batches of 4 (one padded) equal the model's
    forward map on each element, in order, under each example's own caption."""
    from data_pipeline import pipeline, sources
    from data_pipeline.pixels import pixels_to_unit
    from starflow_jax import experiment
    from starflow_jax.text.encoder import TextEncoder
    config = self.config.copy_and_resolve_references()
    config.train.update(noise_std=0.0, dequantize=False)
    result = self.score(config, self.one, split="eval", num_examples=11, batch_size=4)
    self.assertLen(result.per_example, 11)
    exp = experiment.Experiment.from_config(config)
    source = sources.build_source(config.data, "eval")
    to_example = pipeline.ToTrainingExample(exp.text.tokenizer)
    expected = []
    for i in range(11):
      element = to_example.map(source[i])
      cond = TextEncoder(exp.text).apply({"params": self.params["text"]}, element["tokens"][None])
      x = pixels_to_unit(element["video"][None], None)
      out = model_lib.forward(exp.model, self.params["model"], x, cond)
      expected.append(float(losses.nll_per_dim(out.z, out.logdets)[0]))
    # Batched (4) and per-element (1) programs may round differently (float32 sums over the
    # 576 dimensions and every layer's contractions): the scorer tests' bound for this comparison.
    np.testing.assert_allclose(result.per_example, expected, rtol=1e-5, atol=1e-6)
    self.assertGreater(np.ptp(expected), 0)  # the examples differ: order and identity are checked
    d = result.as_dict()
    self.assertEqual(d["num_examples"], 11)
    self.assertAlmostEqual(d["bits_per_dim"], (np.mean(expected) + 7 * np.log(2)) / np.log(2), places=5)
    low, high = d["nats_per_dim_interval"]
    half = 1.959964 * np.std(expected, ddof=1) / np.sqrt(11)
    np.testing.assert_allclose([low, high], [np.mean(expected) - half, np.mean(expected) + half], rtol=1e-5)

  def test_sharded_equals_single_device(self):
    """The training objective's noise and dequantisation: 8 devices (data 4 x fsdp 2) give the
    single device's per-example figures for the same global batches."""
    config = self.config.copy_and_resolve_references()
    single = self.score(config, self.one, split="eval", num_examples=13, batch_size=8, seed=5)
    sharded = self.score(config, self.eight, split="eval", num_examples=13, batch_size=8, seed=5)
    self.assertLen(sharded.per_example, 13)
    np.testing.assert_allclose(sharded.per_example, single.per_example, rtol=1e-5, atol=1e-5)
    other_seed = self.score(config, self.one, split="eval", num_examples=13, batch_size=8, seed=6)
    self.assertFalse(np.allclose(other_seed.per_example, single.per_example, rtol=1e-3))

  def test_bad_requests_are_user_errors(self):
    from starflow_jax.errors import UserError
    config = self.config.copy_and_resolve_references()
    with self.assertRaisesRegex(UserError, "multiple of the mesh's data-parallel size 8"):
      self.score(config, self.eight, num_examples=4, batch_size=4)
    with self.assertRaisesRegex(UserError, "confidence"):
      self.score(config, self.one, confidence=1.5)

  def test_command_line_scores_a_split(self):
    workdir = tempfile.mkdtemp()
    from starflow_jax import fileio
    config = self.config.copy_and_resolve_references()
    fileio.write_json(os.path.join(workdir, "config.json"), config.to_dict())
    helpers_dir = os.path.join(workdir, "model")
    from starflow_jax import experiment
    exp = experiment.Experiment.from_config(config)
    checkpoint.save_model(helpers_dir,
                          exp.model,
                          self.params["model"],
                          text_config=exp.text,
                          text_params=self.params["text"])
    out = os.path.join(workdir, "split.json")
    proc = run_score(f"--workdir={workdir}", "--dataset=eval", "--num_examples=6", "--batch_size=4", f"--out={out}")
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    self.assertIn("bits/dim", proc.stdout)
    report = json.load(open(out))
    self.assertEqual(report["num_examples"], 6)
    low, high = report["bits_per_dim_interval"]
    self.assertLess(low, report["bits_per_dim"])
    self.assertLess(report["bits_per_dim"], high)
    zero = run_score(f"--workdir={workdir}", "--dataset=eval", "--batch_size=0", f"--out={out}")
    self.assertEqual(zero.returncode, 2)
    self.assertIn("--batch_size=0 must be >= 1", zero.stderr)
    both = run_score(f"--workdir={workdir}", "--dataset=eval", "--input=x.gif")
    self.assertEqual(both.returncode, 2)
    self.assertIn("give one of --input", both.stderr)


def run_score(*flags: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "experiments.score", *flags],
                        cwd=REPO,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"),
                        capture_output=True,
                        text=True,
                        timeout=600)


if __name__ == "__main__":
  absltest.main()
