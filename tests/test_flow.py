"""Mathematics of the flow: invertibility, exact log-determinants, causality, dtypes."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from starflow_jax import inverse, model as model_lib, tokens
from starflow_jax.flow import guided_affine
from starflow_jax.model import StarFlow
from starflow_jax.rope import TokenGrid
from tests import helpers


def _inputs(config, batch=2, frames=3, seed=0):
  x = model_lib.example_latents(config, batch, frames)
  x = jax.random.normal(jax.random.PRNGKey(seed), x.shape)
  return x, helpers.random_condition(config, batch, seed)


class RoundTripTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("image", helpers.tiny_image_config()),
      ("image_class", helpers.tiny_image_config(num_classes=5, cond_top_only=True)),
      ("image_cond_all_blocks", helpers.tiny_image_config(txt_size=2, txt_dim=6)),
      ("video", helpers.tiny_video_config()),
      ("video_global_shallow", helpers.tiny_video_config(shallow_block_local=False, cond_top_only=False)),
      ("video_local_text", helpers.tiny_video_config(cond_top_only=False)),
      ("r2l_rms", helpers.tiny_image_config(seq_order="R2L", norm_type="rms_norm", use_bias=False)),
      ("identity_block_exp", helpers.tiny_image_config(layers_per_block=(0, 1, 1), use_softplus=False)),
  )
  def test_inverse_of_forward_is_identity(self, config):
    params = helpers.random_params(config)
    x, cond = _inputs(config)
    out = model_lib.forward(config, params, x, cond)
    chex.assert_shape(out.z, x.shape)
    x_back = inverse.sample_sequential(config, params, out.z, cond)
    chex.assert_trees_all_close(x_back, x, atol=1e-5)
    self.assertFalse(np.allclose(out.z, x, atol=1e-2), "perturbed blocks should not be the identity")


class LogDetTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("image", helpers.tiny_image_config(), None),
      ("image_cond", helpers.tiny_image_config(txt_size=2, txt_dim=6, cond_top_only=True), None),
      ("video", helpers.tiny_video_config(), 3),
      ("video_local_text", helpers.tiny_video_config(cond_top_only=False), 3),
  )
  def test_sum_of_logdets_is_slogdet_of_jacobian(self, config, frames):
    params = helpers.random_params(config, std=0.1)
    x, cond = _inputs(config, batch=1, frames=frames)
    model = StarFlow(config)

    def flat_forward(flat):
      return model.apply({"params": params}, flat.reshape(x.shape), cond).z.reshape(-1)

    jac = jax.jit(jax.jacfwd(flat_forward))(x.reshape(-1))
    sign, logabsdet = np.linalg.slogdet(np.asarray(jac, np.float64))
    out = model_lib.forward(config, params, x, cond)
    total = sum(float(jnp.sum(ld)) for ld in out.logdets)
    np.testing.assert_allclose(total, logabsdet, atol=2e-4, rtol=1e-5)
    self.assertGreater(abs(logabsdet), 0.1)


class CausalityTest(parameterized.TestCase):

  def test_deep_block_is_causal_in_its_token_order(self):
    config = helpers.tiny_video_config()
    params = helpers.random_params(config)
    block = model_lib.deep_block(config)
    grid = TokenGrid(3, 2, 2)
    u = jax.random.normal(jax.random.PRNGKey(0), (1, grid.num_tokens, config.token_dim))
    cond = helpers.random_condition(config, 1)
    apply = jax.jit(lambda u: block.apply({"params": model_lib.deep_params(params)}, u, grid, cond)[0])
    z = apply(u)
    z_perm = tokens.permute(z, block.order, grid.tokens_per_frame)
    u_perm = tokens.permute(u, block.order, grid.tokens_per_frame)
    for i in (0, 3, 5, 11):
      u2 = tokens.unpermute(u_perm.at[:, i].add(1.0), block.order, grid.tokens_per_frame)
      z2 = apply(u2)
      z2_perm = tokens.permute(z2, block.order, grid.tokens_per_frame)
      np.testing.assert_allclose(z2_perm[:, :i], z_perm[:, :i], atol=1e-6)
      self.assertGreater(float(jnp.abs(z2_perm[:, i] - z_perm[:, i]).max()), 1e-3)
      if i + 1 < grid.num_tokens:
        self.assertGreater(float(jnp.abs(z2_perm[:, i + 1:] - z_perm[:, i + 1:]).max()), 1e-4)

  @parameterized.named_parameters(("text_in_deep_block", True), ("text_in_every_block", False))
  def test_frames_only_affect_later_frames(self, cond_top_only):
    config = helpers.tiny_video_config(cond_top_only=cond_top_only)
    params = helpers.random_params(config)
    x, cond = _inputs(config, batch=1, frames=4)
    out = model_lib.forward(config, params, x, cond)
    for n in range(4):
      out2 = model_lib.forward(config, params, x.at[:, n].add(0.5), cond)
      np.testing.assert_allclose(out2.z[:, :n], out.z[:, :n], atol=1e-6)
      # Shallow blocks are frame-local: the state after the last shallow block changes in frame n only.
      shallow_out, shallow_out2 = out.outputs[-2], out2.outputs[-2]
      changed = np.abs(np.asarray(shallow_out2 - shallow_out)).max(axis=(0, 2, 3)) > 1e-6
      np.testing.assert_array_equal(changed, np.arange(4) == n)

  @parameterized.named_parameters(("text_in_deep_block", True), ("text_in_every_block", False))
  def test_shallow_block_never_mixes_frames(self, cond_top_only):
    config = helpers.tiny_video_config(cond_top_only=cond_top_only)
    params = helpers.random_params(config)
    x, cond = _inputs(config, batch=2, frames=3)
    out = model_lib.forward(config, params, x, cond)
    # Each frame alone through the model gives the same shallow outputs as inside the clip.
    for n in range(3):
      single = model_lib.forward(config, params, x[:, n:n + 1], cond)
      for k in range(1, config.num_blocks):
        np.testing.assert_allclose(single.outputs[k][:, 0], out.outputs[k][:, n], atol=1e-5)
    # Frame-local shallow blocks read their clip's own condition only when cond_top_only=False.
    swapped = model_lib.forward(config, params, x, cond[::-1])
    changed = np.abs(np.asarray(swapped.outputs[1] - out.outputs[1])).max()
    self.assertEqual(bool(changed > 1e-4), not cond_top_only)


class DtypeTest(absltest.TestCase):

  def test_bf16_compute_keeps_float32_logdets(self):
    config = helpers.tiny_video_config()
    params = helpers.random_params(config)
    x, cond = _inputs(config)
    out32 = model_lib.forward(config, params, x, cond)
    out16 = model_lib.forward(config.replace(compute_dtype="bfloat16"), params, x, cond)
    for ld in out16.logdets:
      chex.assert_type(ld, jnp.float32)
    chex.assert_type(out16.z, jnp.float32)
    for a, b in zip(out16.logdets, out32.logdets):
      np.testing.assert_allclose(a, b, atol=5e-2)
    np.testing.assert_allclose(out16.z, out32.z, atol=0.1)


class GuidanceTest(absltest.TestCase):

  def test_guidance_formula(self):
    s = jnp.array([[1.0, 2.0], [2.0, 1.0]])  # rows: conditional, null
    mu = jnp.array([[0.5, -1.0], [0.0, 1.0]])
    scale, shift = guided_affine(s, mu, 2.0)
    # element 0: r = min(1/2, 1)^2 = 1/4 -> denom = 1 + 2 - 0.5 = 2.5
    np.testing.assert_allclose(scale[0, 0], 1.0 / np.sqrt(2.5), rtol=1e-6)
    np.testing.assert_allclose(shift[0, 0], (3 * 0.5 - 0.5 * 0.0) / 2.5, rtol=1e-6)
    # element 1: r = min(2, 1)^2 = 1 -> denom 1, plain (1 + w) mu_c - w mu_u
    np.testing.assert_allclose(scale[0, 1], 2.0, rtol=1e-6)
    np.testing.assert_allclose(shift[0, 1], 3 * -1.0 - 2 * 1.0, rtol=1e-6)
    # w = 0 is the conditional model
    scale0, shift0 = guided_affine(s, mu, 0.0)
    np.testing.assert_allclose(scale0, s[:1])
    np.testing.assert_allclose(shift0, mu[:1])

  def test_fresh_block_is_identity(self):
    config = helpers.tiny_image_config()
    params = model_lib.init_params(config, jax.random.PRNGKey(0))
    x, _ = _inputs(config)
    out = model_lib.forward(config, params, x)
    np.testing.assert_allclose(out.z, x, atol=1e-6)
    for ld in out.logdets:
      np.testing.assert_allclose(ld, 0.0, atol=1e-6)


if __name__ == "__main__":
  absltest.main()
