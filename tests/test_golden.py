"""Parity with the official PyTorch code on the shipped golden folders (tests/golden)."""

import io
import json
import os
import re

import jax
import numpy as np
from absl.testing import absltest, parameterized

from starflow_jax import inverse
from starflow_jax.checkpoint import ModelBundle
from starflow_jax.config import ModelConfig
from starflow_jax.interop import golden, official, parity
from starflow_jax.interop.state_dict_io import read_state_dict
from starflow_jax.model import init_params
from starflow_jax.sampling import SamplingOptions, VideoSampler
from tests import helpers


class GoldenParityTest(parameterized.TestCase):

  @parameterized.parameters(*helpers.GOLDEN_NAMES)
  def test_every_known_array_within_tolerance(self, name):
    out = io.StringIO()
    ok = parity.run_parity(os.path.join(helpers.GOLDEN_DIR, name), tolerance=1e-4, out=out)
    text = out.getvalue()
    self.assertTrue(ok, text)
    match = re.search(r"parity: (\d+)/(\d+) arrays within", text)
    self.assertIsNotNone(match, text)
    self.assertEqual(match.group(1), match.group(2))
    self.assertNotIn("not recomputed", text)
    for required in ("forward.z", "loss.loss", "sample.sequential", "roundtrip.x", "sample.jacobi_b4_th0.001",
                     "sample.jacobi_b16_th1e-05"):
      self.assertRegex(text, rf"{re.escape(required)}\s+max_abs_err")
    if name != "image":
      self.assertRegex(text, r"sample\.cfg2\s+max_abs_err")
    if name == "video":
      self.assertRegex(text, r"denoiser\.out\s+max_abs_err")
    if name == "image":
      self.assertRegex(text, r"bruteforce\.logabsdet\s+max_abs_err")

  def test_detects_a_wrong_array(self):
    golden = os.path.join(helpers.GOLDEN_DIR, "image")
    tmp = self.create_tempdir().full_path
    import shutil
    for f in ("config.json", "weights.safetensors"):
      shutil.copy(os.path.join(golden, f), tmp)
    with np.load(os.path.join(golden, "vectors.npz")) as data:
      vectors = {k: data[k] for k in data.files}
    vectors["forward.z"] = vectors["forward.z"] + 1e-3
    np.savez(os.path.join(tmp, "vectors.npz"), **vectors)
    out = io.StringIO()
    self.assertFalse(parity.run_parity(tmp, out=out))
    self.assertRegex(out.getvalue(), r"forward\.z\s+max_abs_err 1\.0\d*e-03\s+FAIL")


class OfficialSamplingOptionsTest(absltest.TestCase):
  """The official sampler's attn_temp, return_sequence and guide_top, against the official code's
  outputs (tests/golden/video_options, README there): through `inverse.invert` and the sampler,
  within the golden tolerance (float32 rounding of the sequential decoder, ~5e-6 here)."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    folder = os.path.join(helpers.GOLDEN_DIR, "video_options")
    with np.load(os.path.join(folder, "vectors.npz")) as data:
      cls.ref = {k: golden.to_channels_last(data[k]) for k in data.files if k not in ("y",)}
      cls.y = data["y"]
    cls.video = golden.load_golden(os.path.join(helpers.GOLDEN_DIR, "video"))
    kwargs = json.load(open(os.path.join(folder, "config.json")))["model_kwargs"]
    cls.shallow_cond = ModelConfig.from_official_kwargs(kwargs)
    cls.shallow_cond_params = official.import_official(
        cls.shallow_cond, read_state_dict(os.path.join(folder, "shallow_cond_weights.safetensors")),
        jax.eval_shape(lambda: init_params(cls.shallow_cond, jax.random.PRNGKey(0))))

  def _sampler(self, config, params, **options):
    return VideoSampler(ModelBundle(config, params),
                        SamplingOptions(method="sequential", guidance=2.0, denoise="none", progress=False, **options))

  def assert_official(self, ours, name):
    np.testing.assert_allclose(ours, self.ref[name], rtol=0, atol=2e-5, err_msg=name)

  def test_attention_temperature(self):
    z, y = self.ref["z"], self.y
    null = np.zeros_like(y)
    self.assert_official(
        inverse.sample_sequential(self.video.config, self.video.params, z, y, 2.0, null, attn_temp=0.8),
        "video.cfg2_attn_temp0.8")
    self.assert_official(
        self._sampler(self.video.config, self.video.params, attn_temp=0.8).sample_latents(z, y, null),
        "video.cfg2_attn_temp0.8")

  def test_return_sequence(self):
    z, y = self.ref["z"], self.y
    stages = self._sampler(self.video.config, self.video.params).sample_latents(z,
                                                                                y,
                                                                                np.zeros_like(y),
                                                                                return_sequence=True)
    self.assertLen(stages, 4)
    for i, stage in enumerate(stages):
      self.assert_official(stage, f"video.cfg2_sequence.{i}")

  def test_guide_top(self):
    z, y = self.ref["z"], self.y
    null = np.zeros_like(y)
    config, params = self.shallow_cond, self.shallow_cond_params
    self.assert_official(inverse.sample_sequential(config, params, z, y, 2.0, null), "shallow_cond.cfg2")
    self.assert_official(inverse.sample_sequential(config, params, z, y, 2.0, null, guide_top=True),
                         "shallow_cond.cfg2_guide_top")
    self.assert_official(
        self._sampler(config, params, guide_top=1).sample_latents(z, y, null), "shallow_cond.cfg2_guide_top")
    self.assertGreater(float(np.abs(self.ref["shallow_cond.cfg2"] - self.ref["shallow_cond.cfg2_guide_top"]).max()),
                       0.1)


if __name__ == "__main__":
  absltest.main()
