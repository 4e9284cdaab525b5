"""The Flax WAN 2.1 / 2.2 video VAE: exact chunked (feature-cache) encoding and decoding,
causality, the diffusers state_dict layout, the autoencoder interface; and parity against
diffusers' PyTorch AutoencoderKLWan built from tiny random configs when the optional extra is
installed (pip install -e .[wan-parity]: torch 2.13.0 + diffusers; nothing is downloaded)."""

import os

import jax
import numpy as np
from absl.testing import absltest, parameterized

from starflow_jax.autoencoder import AutoencoderConfig, build_autoencoder, wan_vae

try:
  import torch
  import diffusers
except ImportError:  # the optional extra is not installed
  torch = diffusers = None

# Tiny configs with WAN's structure: 3 spatial stages (+ a 2x2 patchify for 2.2), 4x temporal.
TINY = {
    "2.1":
        dict(base_dim=8,
             z_dim=4,
             dim_mult=[1, 2, 2, 2],
             num_res_blocks=1,
             attn_scales=[],
             temperal_downsample=[False, True, True],
             latents_mean=[0.0] * 4,
             latents_std=[1.0] * 4),
    "2.1-2res":
        dict(base_dim=8,
             z_dim=4,
             dim_mult=[1, 2, 2, 2],
             num_res_blocks=2,
             attn_scales=[],
             temperal_downsample=[False, True, True],
             latents_mean=[0.0] * 4,
             latents_std=[1.0] * 4),
    # Encoder attention (attn_scales): loads and runs here; diffusers 0.42 cannot run it (its
    # encoder passes feat_cache to WanAttentionBlock), so it has no parity case. No public WAN
    # checkpoint uses it.
    "2.1-attn":
        dict(base_dim=8,
             z_dim=4,
             dim_mult=[1, 2, 2, 2],
             num_res_blocks=2,
             attn_scales=[0.5],
             temperal_downsample=[False, True, True],
             latents_mean=[0.0] * 4,
             latents_std=[1.0] * 4),
    "2.2":
        dict(base_dim=8,
             decoder_base_dim=12,
             z_dim=6,
             dim_mult=[1, 2, 2, 2],
             num_res_blocks=1,
             temperal_downsample=[False, True, True],
             is_residual=True,
             in_channels=12,
             out_channels=12,
             patch_size=2,
             latents_mean=[0.1, -0.2, 0.3, 0.0, 0.5, -1.0],
             latents_std=[2.0, 1.5, 0.5, 1.0, 0.8, 3.0]),
}


def _config(kind):
  return wan_vae.WanVAEConfig(**TINY[kind])


def _video(config, frames=9, seed=0, batch=2):
  s = config.spatial_factor
  rng = np.random.default_rng(seed)
  return rng.uniform(-1, 1, (batch, frames, 2 * s, 3 * s, 3)).astype(np.float32)


def _random_params(config, seed=0):
  """Kernels ~ N(0, 1/fan_in), norms 1 + N(0, 0.1^2), biases N(0, 0.1^2) (no compiled init)."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    noise = rng.standard_normal(leaf.shape).astype(np.float32)
    if path[-1].key == "kernel":
      return (noise / np.sqrt(np.prod(leaf.shape[:-1]))).astype(np.float32)
    return ((1.0 if path[-1].key == "gamma" else 0.0) + 0.1 * noise).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, wan_vae.init_shapes(config))


class WanVAETest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.config = _config("2.2")
    cls.params = _random_params(cls.config)

  def runner(self, **kw):
    return wan_vae.WanVAERunner(self.config, self.params, **kw)

  def test_shapes_and_factors(self):
    self.assertEqual((self.config.spatial_factor, self.config.temporal_factor), (16, 4))
    self.assertEqual((_config("2.1").spatial_factor, _config("2.1").temporal_factor), (8, 4))
    video = _video(self.config)
    z = self.runner().encode(video)
    self.assertEqual(z.shape, (2, 3, 2, 3, 6))
    self.assertEqual(self.runner().decode(z).shape, video.shape)
    self.assertEqual(self.runner().encode(video[:, :1]).shape, (2, 1, 2, 3, 6))  # an image

  def test_chunked_encoding_and_decoding_are_exact(self):
    video = _video(self.config, frames=13)
    by_group = self.runner(encode_chunk=1).moments(video)  # diffusers' chunking: 4 frames per call
    uneven = self.runner(encode_chunk=2).moments(video)  # frame 0, 8 frames, then a shorter chunk
    np.testing.assert_allclose(uneven, by_group, atol=1e-5)
    z = jax.random.normal(jax.random.PRNGKey(3), (2, 6, 2, 3, 6))
    by_frame = self.runner(decode_chunk=1).decode(z)
    np.testing.assert_allclose(self.runner(decode_chunk=2).decode(z), by_frame, atol=1e-5)  # 2, 2, 1

  def test_encoder_and_decoder_are_causal(self):
    runner = self.runner(encode_chunk=2, decode_chunk=2)
    video = _video(self.config)
    z = runner.moments(video)
    for frame, first_latent in ((0, 0), (1, 1), (4, 1), (5, 2), (8, 2)):
      moved = runner.moments(_moved(video, frame))
      changed = np.abs(np.asarray(moved - z)).max(axis=(0, 2, 3, 4)) > 0
      np.testing.assert_array_equal(changed, np.arange(3) >= first_latent, f"pixel frame {frame}")
    latents = jax.random.normal(jax.random.PRNGKey(5), (2, 4, 2, 3, 6)) * 0.3
    pixels = runner.decode(latents)
    for latent in range(4):
      moved = runner.decode(latents.at[:, latent].add(0.5))
      changed = np.abs(np.asarray(moved - pixels)).max(axis=(0, 2, 3, 4)) > 0
      first_pixel = 0 if latent == 0 else 4 * latent - 3
      np.testing.assert_array_equal(changed, np.arange(13) >= first_pixel, f"latent frame {latent}")

  def test_sharded_over_the_batch_equals_one_device(self):
    from starflow_jax import sharding
    mesh = sharding.make_mesh((4, 2, 1), jax.devices()[:8])  # data x fsdp: the batch over 8 devices
    video = _video(self.config, batch=8)
    sharded = wan_vae.WanVAERunner(self.config, self.params, encode_chunk=2, decode_chunk=2, mesh=mesh)
    single = self.runner(encode_chunk=2, decode_chunk=2)
    z = sharded.encode(video)
    self.assertEqual(len(z.sharding.device_set), 8)
    np.testing.assert_allclose(z, single.encode(video), atol=1e-5)
    pixels = sharded.decode(z)
    self.assertEqual(len(pixels.sharding.device_set), 8)
    np.testing.assert_allclose(pixels, single.decode(np.asarray(z)), atol=1e-5)
    with self.assertRaisesRegex(ValueError, "batch of 2 cannot be split over 8 data-parallel devices"):
      sharded.encode(_video(self.config))

  @parameterized.parameters("2.1", "2.1-attn", "2.2")
  def test_state_dict_round_trip(self, kind):
    config = _config(kind)
    params = _random_params(config, seed=1)
    state_dict = wan_vae.state_dict_from_params(params)
    self.assertIn("encoder.conv_in.weight", state_dict)
    self.assertEqual(state_dict["encoder.conv_in.weight"].shape, (config.base_dim, 12 if kind == "2.2" else 3, 3, 3, 3))
    self.assertEqual(state_dict["decoder.mid_block.attentions.0.norm.gamma"].ndim, 3)
    back = wan_vae.params_from_state_dict(config, state_dict)
    jax.tree_util.tree_map(np.testing.assert_array_equal, back, params)

  def test_bad_weights_are_named(self):
    state_dict = wan_vae.state_dict_from_params(self.params)
    broken = dict(state_dict)
    del broken["decoder.up_blocks.1.resnets.0.conv2.weight"]
    broken["encoder.extra.weight"] = np.zeros(3, np.float32)
    broken["quant_conv.bias"] = np.zeros(5, np.float32)
    with self.assertRaisesRegex(
        ValueError, r"missing decoder\.up_blocks\.1\.resnets\.0\.conv2\.weight.*"
        r"shape of quant_conv\.bias.*unused encoder\.extra\.weight"):
      wan_vae.params_from_state_dict(self.config, broken)

  def test_bad_inputs_are_named(self):
    runner = self.runner()
    with self.assertRaisesRegex(ValueError, r"1 \+ 4k frames, got 8"):
      runner.encode(_video(self.config, frames=8))
    with self.assertRaisesRegex(ValueError, "divisible by 16"):
      runner.encode(np.zeros((1, 5, 24, 32, 3), np.float32))
    with self.assertRaisesRegex(ValueError, r"latents \[B, T, h, w, 6\]"):
      runner.decode(np.zeros((1, 2, 2, 2, 4), np.float32))
    with self.assertRaisesRegex(ValueError, "first encoder chunk is frame 0 alone, got 5"):
      wan_vae.WanVAE(self.config).apply({"params": self.params},
                                        _video(self.config, frames=5),
                                        True,
                                        method=wan_vae.WanVAE.encode_chunk,
                                        mutable=["cache"])
    with self.assertRaisesRegex(ValueError, "temperal_downsample needs 3"):
      wan_vae.WanVAEConfig(temperal_downsample=(True,))

  def test_autoencoder_interface_normalises_and_checks_the_kind(self):
    config, params = self.config, self.params
    directory = os.path.join(self.create_tempdir().full_path, "pipeline")
    wan_vae.save_diffusers(os.path.join(directory, "vae"), config, params)  # a pipeline root with vae/
    with self.assertRaises(FileExistsError):  # never replaces a saved VAE
      wan_vae.save_diffusers(os.path.join(directory, "vae"), config, params)
    ae = build_autoencoder(
        AutoencoderConfig(kind="wan2.2", checkpoint=directory, scale=0.6, shift=0.1, encode_chunk=2, decode_chunk=2))
    self.assertEqual((ae.spatial_factor, ae.temporal_factor, ae.latent_channels(3), ae.latent_frames(9)), (16, 4, 6, 3))
    video = _video(config)
    raw = wan_vae.WanVAERunner(config, params, encode_chunk=2).encode(video)
    mean, std = np.asarray(TINY["2.2"]["latents_mean"]), np.asarray(TINY["2.2"]["latents_std"])
    latents = ae.encode(video)
    np.testing.assert_allclose(latents, ((raw - mean) / std - 0.1) * 0.6, atol=1e-5)
    np.testing.assert_allclose(ae.decode(latents),
                               wan_vae.WanVAERunner(config, params, decode_chunk=2).decode(raw),
                               atol=1e-5)
    with self.assertRaisesRegex(ValueError, r"\(spatial, temporal\) by \(16, 4\).*'wan2.1' means \(8, 4\)"):
      build_autoencoder(AutoencoderConfig(kind="wan2.1", checkpoint=directory))
    with self.assertRaisesRegex(ValueError, "without weights cannot decode: set autoencoder.checkpoint"):
      build_autoencoder(AutoencoderConfig(kind="wan2.2")).decode(latents)


class WanTrainingTest(absltest.TestCase):

  def test_on_the_fly_training_encodes_before_the_step_on_a_mesh(self):
    """With autoencoder.kind='wan2.2' and raw videos, the trainer encodes each batch with the WAN
    runner just before the compiled step (whose program then holds no VAE weights), split over
    the mesh; losses equal a one-device run that encodes inside the step."""
    from experiments.configs import tiny_video
    from starflow_jax import sharding
    from starflow_jax.train import Trainer
    from tests.test_train import make_batch
    directory = os.path.join(self.create_tempdir().full_path, "vae")
    config_2_2 = _config("2.2")
    wan_vae.save_diffusers(directory, config_2_2, _random_params(config_2_2))
    config = tiny_video.get_config("micro")
    config.data.shapes.update(num_frames=5, height=32, width=32)
    config.autoencoder.update(kind="wan2.2", checkpoint=directory, scale=0.5)
    config.model.update(in_channels=6, img_size=2, patch_size=1)
    config.train.update(batch_size=4, dequantize=True)

    sharded = Trainer(config, sharding.make_mesh((2, 2, 2), jax.devices()[:8]))
    self.assertTrue(sharded.encodes_before_step)
    single = Trainer(config, sharding.make_mesh((1, 1, 1), jax.devices()[:1]))
    single.encodes_before_step = False  # the reference: the VAE traced inside the step
    states = [sharded.init_state(0), single.init_state(0)]
    for step in range(2):
      batch = make_batch(config, sharded.mesh, seed=step)
      states[0], m_sharded = sharded.step(states[0], batch)
      states[1], m_single = single.step(states[1], make_batch(config, single.mesh, seed=step))
      for key in ("loss", "grad_norm", "denoiser_loss"):
        np.testing.assert_allclose(float(m_sharded[key]), float(m_single[key]), rtol=2e-5, err_msg=key)
    latents = sharded.encode_batch(states[0], batch)["video"]
    self.assertEqual(latents.shape, (4, 2, 2, 2, 6))
    self.assertEqual(len(latents.sharding.device_set), 8)


def _moved(video, frame):
  out = video.copy()
  out[:, frame] = np.clip(out[:, frame] + 0.5, -1, 1)
  return out


@absltest.skipIf(torch is None, "optional extra not installed: pip install torch==2.13.0 diffusers")
class WanVAEParityTest(parameterized.TestCase):

  @parameterized.parameters("2.1", "2.1-2res", "2.2")
  def test_encode_and_decode_match_diffusers(self, kind):
    torch.manual_seed(0)
    extra = {"scale_factor_spatial": 16} if kind == "2.2" else {}
    reference = diffusers.AutoencoderKLWan(**TINY[kind], **extra).eval()
    with torch.no_grad():  # non-trivial norms and biases
      for name, p in reference.named_parameters():
        if name.endswith(("gamma", "bias")):
          p.add_(0.1 * torch.randn_like(p))
    directory = self.create_tempdir().full_path
    reference.save_pretrained(directory, safe_serialization=True)
    config, params = wan_vae.load_diffusers(directory)
    video = _video(config)
    with torch.no_grad():
      ref_moments = reference._encode(torch.from_numpy(video).permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1).numpy()
    z = ref_moments[..., :config.z_dim]
    with torch.no_grad():
      ref_pixels = reference.decode(torch.from_numpy(z).permute(0, 4, 1, 2, 3)).sample.permute(0, 2, 3, 4, 1).numpy()
    self.assertLess(np.mean(np.abs(ref_pixels) >= 1.0), 0.05)  # the clip to [-1, 1] hides little
    for chunk in (1, 2):
      runner = wan_vae.WanVAERunner(config, params, encode_chunk=chunk, decode_chunk=chunk)
      np.testing.assert_allclose(runner.moments(video), ref_moments, atol=1e-4, rtol=1e-4)
      np.testing.assert_allclose(runner.decode(z), ref_pixels, atol=1e-4, rtol=1e-4)

  def test_exported_weights_load_into_diffusers(self):
    config = _config("2.2")
    params = _random_params(config, seed=4)
    directory = os.path.join(self.create_tempdir().full_path, "vae")
    wan_vae.save_diffusers(directory, config, params)
    reference = diffusers.AutoencoderKLWan.from_pretrained(directory).eval()
    video = _video(config)
    with torch.no_grad():
      ref = reference._encode(torch.from_numpy(video).permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1).numpy()
    np.testing.assert_allclose(wan_vae.WanVAERunner(config, params).moments(video), ref, atol=1e-4, rtol=1e-4)


if __name__ == "__main__":
  absltest.main()
