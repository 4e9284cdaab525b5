"""Import/export of official PyTorch state_dicts, the convert CLI and model directories."""

import json
import os

import jax
import numpy as np
from absl.testing import absltest
from safetensors.numpy import load_file, save_file

from starflow_jax import checkpoint
from starflow_jax.config import ModelConfig
from starflow_jax.interop import convert, official
from starflow_jax.interop.golden import load_golden
from starflow_jax.interop.state_dict_io import read_state_dict
from starflow_jax.model import init_params
from tests import helpers

VIDEO = os.path.join(helpers.GOLDEN_DIR, "video")
IMAGE = os.path.join(helpers.GOLDEN_DIR, "image")
PTH = os.path.join(os.path.dirname(__file__), "data", "image_state_dict.pth")


def _shapes(config):
  return jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))


class ImportExportTest(absltest.TestCase):

  def test_export_reproduces_the_official_state_dict_bitwise(self):
    for name in helpers.GOLDEN_NAMES:
      golden = load_golden(os.path.join(helpers.GOLDEN_DIR, name))
      exported = official.export_official(golden.config, golden.params)
      original = load_file(os.path.join(helpers.GOLDEN_DIR, name, "weights.safetensors"))
      self.assertEqual(set(exported), set(original), name)
      for key in original:
        np.testing.assert_array_equal(exported[key], original[key], err_msg=key)
      self.assertEqual(golden.config.to_official_kwargs(), {
          **golden.config.to_official_kwargs(),
          **golden.meta["model_kwargs"]
      })

  def test_import_of_export_is_bitwise(self):
    config = helpers.tiny_video_config(denoiser_layers=8)
    params = helpers.random_params(config)
    back = official.import_official(config, official.export_official(config, params), _shapes(config))
    jax.tree_util.tree_map(np.testing.assert_array_equal, back, params)

  def test_pth_equals_safetensors(self):
    config = ModelConfig.from_official_kwargs(json.load(open(os.path.join(IMAGE, "config.json"))))
    a = official.import_official(config, read_state_dict(PTH), _shapes(config))
    b = official.import_official(config, read_state_dict(os.path.join(IMAGE, "weights.safetensors")), _shapes(config))
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)

  def test_errors_name_the_key(self):
    config = ModelConfig.from_official_kwargs(json.load(open(os.path.join(VIDEO, "config.json"))))
    sd = load_file(os.path.join(VIDEO, "weights.safetensors"))
    missing = dict(sd)
    del missing["blocks.2.proj_txt.weight"]
    with self.assertRaisesRegex(ValueError, r"missing keys.*blocks\.2\.proj_txt\.weight"):
      official.import_official(config, missing, _shapes(config))
    unknown = dict(sd, **{"blocks.2.extra.weight": np.zeros(3, np.float32)})
    with self.assertRaisesRegex(ValueError, r"unknown keys.*blocks\.2\.extra\.weight"):
      official.import_official(config, unknown, _shapes(config))
    wrong = dict(sd, **{"blocks.0.proj_in.weight": np.zeros((64, 5), np.float32)})
    with self.assertRaisesRegex(ValueError, r"shape mismatch for blocks\.0\.proj_in\.weight"):
      official.import_official(config, wrong, _shapes(config))
    # Wrapper prefixes (DDP / torch.compile) are stripped.
    wrapped = {"module." + k: v for k, v in sd.items()}
    official.import_official(config, {"model": wrapped}, _shapes(config))

  def test_unsupported_official_options_are_rejected(self):
    kwargs = json.load(open(os.path.join(VIDEO, "config.json")))["model_kwargs"]
    with self.assertRaisesRegex(ValueError, "use_swiglu"):
      ModelConfig.from_official_kwargs(dict(kwargs, use_swiglu=True))
    with self.assertRaisesRegex(ValueError, "unknown official Model keyword argument 'bogus'"):
      ModelConfig.from_official_kwargs(dict(kwargs, bogus=1))
    # ... and ours without an official equivalent are not exported: text in frame-local blocks.
    with self.assertRaisesRegex(ValueError, "frame-local shallow blocks that read the condition"):
      helpers.tiny_video_config(cond_top_only=False, denoiser_layers=8).to_official_kwargs()
    helpers.tiny_video_config(denoiser_layers=8).to_official_kwargs()


class ConvertCliTest(absltest.TestCase):

  def test_round_trip_through_the_cli(self):
    tmp = self.create_tempdir().full_path
    model_dir = os.path.join(tmp, "video_jax")
    rc = convert.main([
        "official-to-jax", "--weights",
        os.path.join(VIDEO, "weights.safetensors"), "--config",
        os.path.join(VIDEO, "config.json"), "--out", model_dir
    ])
    self.assertEqual(rc, 0)
    config, params = checkpoint.load_model(model_dir)
    self.assertEqual(config.top_block_channels, 96)
    out = os.path.join(tmp, "video_official.safetensors")
    self.assertEqual(convert.main(["jax-to-official", "--checkpoint", model_dir, "--out", out]), 0)
    exported, original = load_file(out), load_file(os.path.join(VIDEO, "weights.safetensors"))
    self.assertEqual(set(exported), set(original))
    for key in original:
      np.testing.assert_array_equal(exported[key], original[key], err_msg=key)
    kwargs = json.load(open(os.path.join(tmp, "video_official.json")))
    golden_kwargs = json.load(open(os.path.join(VIDEO, "config.json")))["model_kwargs"]
    for key, value in golden_kwargs.items():
      self.assertEqual(kwargs[key], value, key)
    # A second conversion to the same place is refused and leaves the first one intact.
    before = sorted(os.listdir(model_dir))
    rc = convert.main(
        ["official-to-jax", "--weights", PTH, "--config",
         os.path.join(IMAGE, "config.json"), "--out", model_dir])
    self.assertEqual(rc, 2)
    self.assertEqual(sorted(os.listdir(model_dir)), before)
    checkpoint.load_model(model_dir)

  def test_pth_written_without_torch_reads_back_bitwise(self):
    """jax-to-official --out G.pth: our zip-format torch.save writer, read back by our reader (and by
    torch.load(weights_only=True) where torch is installed) equal to the .safetensors export."""
    tmp = self.create_tempdir().full_path
    model_dir = os.path.join(tmp, "video_jax")
    convert.main([
        "official-to-jax", "--weights",
        os.path.join(VIDEO, "weights.safetensors"), "--config",
        os.path.join(VIDEO, "config.json"), "--out", model_dir
    ])
    pth = os.path.join(tmp, "video.pth")
    self.assertEqual(convert.main(["jax-to-official", "--checkpoint", model_dir, "--out", pth]), 0)
    original = load_file(os.path.join(VIDEO, "weights.safetensors"))
    back = read_state_dict(pth)
    self.assertEqual(set(back), set(original))
    for key in original:
      np.testing.assert_array_equal(back[key], original[key], err_msg=key)
      self.assertEqual(back[key].dtype, original[key].dtype, key)
    self.assertEqual(json.load(open(os.path.join(tmp, "video.json"))),
                     checkpoint.load_model(model_dir)[0].to_official_kwargs())
    try:
      import torch
    except ImportError:
      return
    loaded = torch.load(pth, weights_only=True)
    for key in original:
      np.testing.assert_array_equal(loaded[key].numpy(), original[key], err_msg=key)

  def test_failed_conversion_writes_nothing(self):
    tmp = self.create_tempdir().full_path
    sd = load_file(os.path.join(VIDEO, "weights.safetensors"))
    del sd["blocks.0.sos_embed"]
    bad = os.path.join(tmp, "bad.safetensors")
    save_file(sd, bad)
    out = os.path.join(tmp, "out")
    rc = convert.main(
        ["official-to-jax", "--weights", bad, "--config",
         os.path.join(VIDEO, "config.json"), "--out", out])
    self.assertEqual(rc, 2)
    self.assertFalse(os.path.exists(out))
    self.assertEqual(sorted(os.listdir(tmp)), ["bad.safetensors"])

  def test_damaged_model_directory_gives_a_clear_error(self):
    tmp = self.create_tempdir().full_path
    with self.assertRaisesRegex(ValueError, "not a model directory"):
      checkpoint.load_model(tmp)
    with self.assertRaisesRegex(FileNotFoundError, "does not exist"):
      checkpoint.load_model(os.path.join(tmp, "nope"))


if __name__ == "__main__":
  absltest.main()
