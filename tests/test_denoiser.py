"""Flow-score matching: the denoiser's frame-block mask, the training target, inference steps."""

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from starflow_jax import losses, model as model_lib
from starflow_jax.denoiser import frame_block_mask
from starflow_jax.sampling import OFFICIAL_DENOISE_STEP, SamplingOptions, VideoSampler
from starflow_jax.losses import flow_score_target
from tests import helpers


class MaskTest(parameterized.TestCase):

  @parameterized.parameters((1, 2, 2), (1, 1, 2), (1, 2, 1), (2, 2, 2), (2, 1, 1))
  def test_output_frames_depend_on_their_receptive_field(self, layers, lookahead, window):
    """One layer: output frame n moves with input frame m iff n + A - 1 - G <= m <= n + A - 1
    (the mask). L layers compound it, n - L (G - A + 1) <= m <= n + L (A - 1), and from two layers
    on, frames 0 .. A - 1 also reach every frame through the text prefix (which attends to them)."""
    config = helpers.tiny_video_config(temporal_causal=lookahead, denoiser_window=window, denoiser_layers=layers)
    params = helpers.random_params(config, std=0.1)
    frames = 6
    x = jax.random.normal(jax.random.PRNGKey(0), (1, frames, 4, 4, 2))
    cond = helpers.random_condition(config, 1)
    base = model_lib.denoise(config, params, x, cond)
    low, high = layers * (window - lookahead + 1), layers * (lookahead - 1)
    for m in range(frames):
      moved = model_lib.denoise(config, params, x.at[:, m].add(1.0), cond)
      changed = np.abs(np.asarray(moved - base)).max(axis=(0, 2, 3, 4))
      for n in range(frames):
        via_text = layers >= 2 and m <= lookahead - 1  # (two layers: exactly frames 0 .. A-1)
        if n - low <= m <= n + high or via_text:
          self.assertGreater(changed[n], 1e-5, f"output frame {n} should see input frame {m}")
        else:
          self.assertEqual(changed[n], 0.0, f"output frame {n} must not see input frame {m}")
    # The text prefix is visible to every frame.
    other = model_lib.denoise(config, params, x, cond + 1.0)
    self.assertTrue(np.all(np.abs(np.asarray(other - base)).max(axis=(0, 2, 3, 4)) > 1e-4))

  def test_mask_matches_the_official_formula_for_text_rows(self):
    mask = np.asarray(frame_block_mask(cond_len=2, num_frames=3, tokens_per_frame=2, lookahead=2, window=1))
    # text tokens see the text and frames 0 .. A-1 = 0, 1
    np.testing.assert_array_equal(mask[0], [1, 1, 1, 1, 1, 1, 0, 0])
    # a token of frame 1 sees frames 1 + 2 - 1 - 1 = 1 .. 2
    np.testing.assert_array_equal(mask[4], [1, 1, 0, 0, 1, 1, 1, 1])


class TargetTest(absltest.TestCase):

  def test_target_is_sigma_times_each_examples_nll_gradient(self):
    config = helpers.tiny_video_config()
    params = helpers.random_params(config, std=0.1)
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 2, 4, 4, 2))
    cond = helpers.random_condition(config, 3)
    sigma = 0.3

    def mean_loss(x):  # what the train step differentiates: the official batch-mean loss
      out = model_lib.StarFlow(config).apply({"params": params}, x, cond)
      return losses.flow_loss(out.z, out.logdets)["loss"]

    target = flow_score_target(jax.jit(jax.grad(mean_loss))(x), sigma)
    for b in range(3):

      def example_nll(xb):
        out = model_lib.StarFlow(config).apply({"params": params}, xb[None], cond[b:b + 1])
        return losses.total_nll(out.z, out.logdets)[0]

      expected = sigma * jax.jit(jax.grad(example_nll))(x[b])
      # float32 summation order differs between the batched and the single-example graph: allow
      # an error relative to the gradient's scale (entries reach ~50 here).
      scale = float(np.abs(expected).max())
      np.testing.assert_allclose(target[b], expected, rtol=2e-4, atol=2e-6 * scale)


class InferenceTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.bundle, cls.cond = helpers.golden_video_bundle()
    cls.x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 4, 4, 4))

  def _sampler(self, **kw):
    return VideoSampler(self.bundle, SamplingOptions(progress=False, noise_std=0.5, **kw))

  def test_learned_step_defaults_to_sigma_and_offers_the_official_constant(self):
    s_phi = model_lib.denoise(self.bundle.config, self.bundle.params, self.x, self.cond)
    tweedie = self._sampler(denoise="learned").denoise(self.x, self.cond)
    np.testing.assert_allclose(tweedie, self.x - 0.5 * s_phi, atol=1e-6)
    official = self._sampler(denoise="learned", denoise_step=OFFICIAL_DENOISE_STEP).denoise(self.x, self.cond)
    np.testing.assert_allclose(official, self.x - 0.3 * s_phi, atol=1e-6)

  def test_score_based_alternative_uses_the_flows_gradient(self):
    config, params = self.bundle.config, self.bundle.params

    def total_nll(x):
      out = model_lib.StarFlow(config).apply({"params": params}, x, self.cond)
      return jnp.sum(losses.total_nll(out.z, out.logdets))

    expected = self.x - 0.25 * jax.jit(jax.grad(total_nll))(self.x)  # x + sigma^2 grad log p
    np.testing.assert_allclose(self._sampler(denoise="score").denoise(self.x, self.cond),
                               expected,
                               rtol=1e-5,
                               atol=1e-5)

  def test_windowed_denoising_of_long_videos(self):
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 7, 4, 4, 4))
    full = self._sampler(denoise="learned").denoise(x, self.cond)
    windowed = self._sampler(denoise="learned", window=3).denoise(x, self.cond)
    s = lambda chunk: chunk - 0.5 * model_lib.denoise(self.bundle.config, self.bundle.params, chunk, self.cond)
    # windows [0,3), [1,4), [2,5), [3,6), [4,7) with denoiser_window = 2 frames of overlap
    np.testing.assert_allclose(windowed[:, :3], s(x[:, 0:3]), atol=1e-6)
    np.testing.assert_allclose(windowed[:, 3], s(x[:, 1:4])[:, 2], atol=1e-6)
    np.testing.assert_allclose(windowed[:, 6], s(x[:, 4:7])[:, 2], atol=1e-6)
    self.assertEqual(windowed.shape, full.shape)


if __name__ == "__main__":
  absltest.main()
