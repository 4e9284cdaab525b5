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


def run_score(*flags: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "experiments.score", *flags],
                        cwd=REPO,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"),
                        capture_output=True,
                        text=True,
                        timeout=600)


if __name__ == "__main__":
  absltest.main()
