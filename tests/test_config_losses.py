"""Model config validation, official kwargs round trip, likelihood and bits-per-dim."""

import math

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from starflow_jax import losses, model as model_lib
from starflow_jax.config import ModelConfig
from tests import helpers


class ConfigTest(absltest.TestCase):

  def test_errors_name_the_field(self):
    base = dict(in_channels=4,
                img_size=8,
                patch_size=2,
                channels=64,
                num_blocks=2,
                layers_per_block=(1, 1),
                head_dim=32)
    ModelConfig(**base).validate()
    cases = [
        (dict(patch_size=3), "img_size=8 is not divisible by patch_size=3"),
        (dict(head_dim=48), "channels=64 is not divisible by head_dim=48"),
        (dict(layers_per_block=(1, 1, 1)), "layers_per_block has 3 entries but num_blocks=2"),
        (dict(seq_order="X"), "seq_order"),
        (dict(temporal_causal=1, seq_order="R2L"), "seq_order must be 'L2R'"),
        (dict(txt_dim=8), "txt_dim=8 needs txt_size > 0"),
        (dict(cond_top_only=True), "cond_top_only=True needs a condition"),
        (dict(head_dim=16, txt_size=2, txt_dim=4), "does not fit the 3D RoPE layout"),
        (dict(layers_per_block=(1, 0)), "deep block"),
        (dict(compute_dtype="float64"), "compute_dtype"),
    ]
    for change, message in cases:
      with self.assertRaisesRegex(ValueError, message, msg=str(change)):
        ModelConfig(**{**base, **change}).validate()

  def test_dict_round_trip(self):
    config = helpers.tiny_video_config()
    self.assertEqual(ModelConfig.from_dict(config.to_dict()), config)
    with self.assertRaisesRegex(ValueError, "unknown model config fields"):
      ModelConfig.from_dict({**config.to_dict(), "nope": 1})

  def test_block_orders(self):
    config = helpers.tiny_video_config()
    self.assertEqual([config.block_permutation(i) for i in range(3)], ["flip_in_frame", "identity", "flip_in_frame"])
    image = helpers.tiny_image_config(seq_order="R2L")
    self.assertEqual([image.block_permutation(i) for i in range(3)], ["identity", "flip", "identity"])


class LikelihoodTest(absltest.TestCase):

  def test_identity_flow_gives_the_gaussian_likelihood(self):
    config = helpers.tiny_image_config()
    params = model_lib.init_params(config, jax.random.PRNGKey(0))  # fresh: identity map
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 4, 4, 3))
    out = model_lib.forward(config, params, x)
    nll = losses.nll_per_dim(out.z, out.logdets)
    expected = np.mean(0.5 * np.asarray(x)**2 + 0.5 * math.log(2 * math.pi), axis=(1, 2, 3))
    np.testing.assert_allclose(nll, expected, rtol=1e-6)
    np.testing.assert_allclose(losses.total_nll(out.z, out.logdets), expected * 48, rtol=1e-6)

  def test_nll_matches_change_of_variables(self):
    config = helpers.tiny_image_config()
    params = helpers.random_params(config, std=0.1)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 4, 3))
    out = model_lib.forward(config, params, x)
    dims = 48
    log_prior = -0.5 * jnp.sum(out.z.reshape(2, -1)**2, -1) - 0.5 * dims * math.log(2 * math.pi)
    log_det = sum(jnp.sum(ld.reshape(2, -1), -1) for ld in out.logdets)
    np.testing.assert_allclose(losses.total_nll(out.z, out.logdets), -(log_prior + log_det), rtol=1e-5)
    loss = losses.flow_loss(out.z, out.logdets)
    np.testing.assert_allclose(loss["loss"] + losses.HALF_LOG_2PI,
                               jnp.mean(losses.nll_per_dim(out.z, out.logdets)),
                               rtol=1e-6)

  def test_bits_per_dim(self):
    # A uniform density on [-1, 1]^d has nll = log(2) per dim -> exactly 8 bits for 8-bit data.
    np.testing.assert_allclose(losses.bits_per_dim(jnp.asarray(math.log(2.0))), 8.0, rtol=1e-6)
    np.testing.assert_allclose(losses.bits_per_dim(jnp.asarray(math.log(2.0)), num_bits=5), 5.0, rtol=1e-6)

  def test_frame_nll_is_the_causal_factorisation(self):
    """Per-frame NLLs sum to the clip's; frame t's does not depend on later frames (bit for bit),
    and frame 0's is the NLL of the one-frame clip (to float32 rounding of other shapes)."""
    config = helpers.tiny_video_config()
    params = helpers.random_params(config, std=0.1)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 4, 4, 2))
    cond = helpers.random_condition(config, 2)
    nll = lambda v: losses.frame_nll(*(lambda o: (o.z, o.logdets))(model_lib.forward(config, params, v, cond)))
    frames = nll(x)
    self.assertEqual(frames.shape, (2, 3))
    out = model_lib.forward(config, params, x, cond)
    np.testing.assert_allclose(jnp.sum(frames, 1), losses.total_nll(out.z, out.logdets), rtol=1e-5)
    changed = nll(x.at[:, 2].add(1.0))
    np.testing.assert_array_equal(changed[:, :2], frames[:, :2])
    self.assertGreater(float(jnp.abs(changed[:, 2] - frames[:, 2]).max()), 1e-2)
    first = model_lib.forward(config, params, x[:, :1], cond)
    np.testing.assert_allclose(frames[:, 0], losses.total_nll(first.z, first.logdets), rtol=1e-5)

  def test_token_nll_sums_to_the_frame_nll(self):
    """Per-token shares in raster order: a frame's tokens sum to its NLL, for frame-local and
    clip-wide shallow blocks (their orders undone per frame or per clip) and image models."""
    for config, shape in ((helpers.tiny_video_config(), (2, 3, 4, 4, 2)),
                          (helpers.tiny_video_config(shallow_block_local=False, cond_top_only=False),
                           (2, 3, 4, 4, 2)), (helpers.tiny_image_config(), (2, 4, 4, 3))):
      with self.subTest(local=config.shallow_block_local, video=config.is_video):
        params = helpers.random_params(config, std=0.1)
        x = jax.random.normal(jax.random.PRNGKey(1), shape)
        out = model_lib.forward(config, params, x, helpers.random_condition(config, 2))
        frames = shape[1] if config.is_video else 1
        per_token = model_lib.token_nll(config, out, frames)
        z = out.z if config.is_video else out.z[:, None]
        np.testing.assert_allclose(jnp.sum(per_token, -1), losses.frame_nll(z, out.logdets), rtol=1e-5, atol=1e-3)
        self.assertEqual(per_token.shape[:2], (2, frames))

  def test_token_nll_undoes_each_block_s_order(self):
    """A log-det placed at position j of a flipped block's order lands on raster token N-1-j of
    its frame (shallow block 0 and the deep block reverse each frame's tokens)."""
    config = helpers.tiny_video_config()
    self.assertEqual((model_lib.shallow_block(config, 0).order, model_lib.deep_block(config).order),
                     ("flip_in_frame", "flip_in_frame"))
    b, t, n, d = 1, 3, 4, 8  # 4 x 4 latents of 2 channels, patch 2: 4 tokens of 8 values per frame
    marked = jnp.zeros((b, t, n, d)).at[0, 1, 0, 0].set(1.0)  # frame 1, first in block order
    z = jnp.zeros((b, t, 4, 4, 2))
    prior = n * d * losses.HALF_LOG_2PI
    for block, logdets in (("shallow", (marked, jnp.zeros((b, t, n, d)), jnp.zeros(
        (b, t * n, d)))), ("deep", (jnp.zeros((b, t, n, d)),) * 2 + (marked.reshape(b, t * n, d),))):
      with self.subTest(block=block):
        per_token = model_lib.token_nll(config, model_lib.FlowOutput(z=z, logdets=logdets, outputs=()), t) - prior / n
        expected = np.zeros((b, t, n))
        expected[0, 1, n - 1] = -1.0
        np.testing.assert_allclose(per_token, expected, atol=1e-6)

  def test_drop_first_frame(self):
    z = jnp.ones((1, 3, 2, 2, 1)).at[:, 0].set(10.0)
    logdets = [jnp.zeros((1, 3, 4, 1)).at[:, 0].set(5.0), jnp.zeros((1, 12, 1)).at[:, :4].set(5.0)]
    loss = losses.flow_loss(z, logdets, drop_first_frame=True)
    np.testing.assert_allclose(loss["loss_z"], 0.5)
    np.testing.assert_allclose(loss["loss_logdet"], 0.0)


if __name__ == "__main__":
  absltest.main()
