"""Parity with the official PyTorch code on the shipped golden folders (tests/golden)."""

import io
import os
import re

from absl.testing import absltest, parameterized

from starflow_jax.interop import parity
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
    import numpy as np
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


if __name__ == "__main__":
  absltest.main()
