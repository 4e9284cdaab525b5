"""The small causal 3D VAE: shapes, causality, exact chunked decoding, checkpoints, learning."""

import jax
import numpy as np
import optax
from absl.testing import absltest

from starflow_jax.autoencoder import AutoencoderConfig, build_autoencoder, causal_vae, vae_checkpoint
from starflow_jax.autoencoder.base import DECODE_CONTEXT

CONFIG = causal_vae.CausalVAEConfig(latent_channels=4, channels=(16, 16, 16))


def _init(config=CONFIG, frames=9, size=16, seed=0):
  module = causal_vae.CausalVAE(config)
  x = jax.random.uniform(jax.random.PRNGKey(seed), (2, frames, size, size, 3), minval=-1, maxval=1)
  params = jax.jit(module.init)(jax.random.PRNGKey(seed + 1), x, jax.random.PRNGKey(2))["params"]
  return module, params, x


class CausalVAETest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.module, cls.params, cls.x = _init()
    cls.encode = staticmethod(jax.jit(lambda p, x: cls.module.apply({"params": p}, x, method=cls.module.encode)))
    cls.decode = staticmethod(jax.jit(lambda p, z: cls.module.apply({"params": p}, z, method=cls.module.decode)))

  def test_shapes(self):
    z = self.encode(self.params, self.x)
    self.assertEqual(z.shape, (2, 3, 2, 2, 4))  # 1 + 4k frames -> 1 + k; 8x spatial
    self.assertEqual(self.decode(self.params, z).shape, self.x.shape)
    self.assertEqual(self.encode(self.params, self.x[:, :1]).shape, (2, 1, 2, 2, 4))  # an image

  def test_encoder_and_decoder_are_causal(self):
    z = self.encode(self.params, self.x)
    for frame, first_latent in ((0, 0), (3, 1), (4, 1), (5, 2), (8, 2)):
      moved = self.encode(self.params, self.x.at[:, frame].add(0.5))
      changed = np.abs(np.asarray(moved - z)).max(axis=(0, 2, 3, 4)) > 0
      np.testing.assert_array_equal(changed, np.arange(3) >= first_latent, f"pixel frame {frame}")
    zz = jax.random.normal(jax.random.PRNGKey(5), (1, 5, 2, 2, 4))
    pixels = self.decode(self.params, zz)
    for latent in range(5):
      moved = self.decode(self.params, zz.at[:, latent].add(1.0))
      changed = np.abs(np.asarray(moved - pixels)).max(axis=(0, 2, 3, 4)) > 0
      first_pixel = 0 if latent == 0 else 4 * latent - 3
      np.testing.assert_array_equal(changed, np.arange(17) >= first_pixel, f"latent frame {latent}")

  def test_chunked_decoding_is_exact(self):
    directory = self.create_tempdir().full_path + "/vae"
    vae_checkpoint.save(directory, CONFIG, self.params)
    autoencoder = build_autoencoder(
        AutoencoderConfig(kind="causal_vae", checkpoint=directory, scale=0.5, shift=0.1, decode_chunk=3))
    latents = jax.random.normal(jax.random.PRNGKey(7), (1, 3 + DECODE_CONTEXT + 5, 2, 2, 4))
    chunked = autoencoder.decode(latents)
    full = self.decode(self.params, latents / 0.5 + 0.1)
    self.assertEqual(chunked.shape, full.shape)
    np.testing.assert_allclose(chunked, full, atol=1e-5)
    np.testing.assert_allclose(autoencoder.encode(self.x), (self.encode(self.params, self.x) - 0.1) * 0.5, atol=1e-6)
    self.assertEqual(autoencoder.latent_frames(9), 3)
    with self.assertRaisesRegex(ValueError, "needs 1 \\+ 4k frames, got 8"):
      autoencoder.latent_frames(8)

  def test_checkpoint_round_trip_and_errors(self):
    directory = self.create_tempdir().full_path + "/vae"
    vae_checkpoint.save(directory, CONFIG, self.params, {"psnr_db": 1.0})
    config, params = vae_checkpoint.load(directory)
    self.assertEqual(config, CONFIG)
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, jax.device_get(self.params))
    with self.assertRaisesRegex(ValueError, "not a readable causal-VAE directory"):
      vae_checkpoint.load(self.create_tempdir().full_path)
    with self.assertRaisesRegex(ValueError, "needs autoencoder.checkpoint"):
      build_autoencoder(AutoencoderConfig(kind="causal_vae"))

  def test_training_reduces_the_reconstruction_error(self):
    module, params, x = _init(frames=5, size=8, seed=3)  # small: XLA's CPU 3D convolutions are slow
    optimizer = optax.adam(3e-3)
    state = optimizer.init(params)

    @jax.jit
    def step(params, state, i):
      (loss, m), grads = jax.value_and_grad(lambda p: causal_vae.vae_loss(module, p, x, jax.random.PRNGKey(i)),
                                            has_aux=True)(params)
      updates, state = optimizer.update(grads, state, params)
      return optax.apply_updates(params, updates), state, m["mse"]

    mses = []
    for i in range(25):
      params, state, mse = step(params, state, i)
      mses.append(float(mse))
    self.assertLess(mses[-1], 0.5 * mses[0], mses)


if __name__ == "__main__":
  absltest.main()
