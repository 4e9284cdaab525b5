"""Streaming generation: `VideoSampler.stream` yields exactly `generate`'s frames, a prompt
switch changes only the frames after it, and an unbounded stream keeps memory and the set of
compiled programs flat."""

import gc

import jax
import numpy as np
from absl.testing import absltest, parameterized

from starflow_jax.autoencoder import AutoencoderConfig, causal_vae, vae_checkpoint
from starflow_jax.checkpoint import ModelBundle
from starflow_jax.errors import UserError
from starflow_jax.jacobi import JacobiOptions
from starflow_jax.sampling import SamplingOptions, VideoSampler, denoise_windows
from tests import helpers

# Look-ahead of one frame per denoiser layer (temporal_causal 2), two layers: a frame's denoised
# value waits for the two frames after it.
CONFIG = helpers.tiny_video_config(temporal_causal=2, denoiser_window=1)


def _options(method: str, **overrides) -> SamplingOptions:
  values = dict(method=method,
                guidance=1.5,
                denoise="learned",
                noise_std=0.3,
                window=4,
                context=3,
                jacobi=JacobiOptions(block_size=2, threshold=1e-3),
                progress=False)
  values.update(overrides)
  return SamplingOptions(**values)


def _streamed(stream) -> np.ndarray:
  return np.stack([np.asarray(frame) for frame in stream], axis=1)  # [B, T, H, W, C]


class StreamTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.bundle = ModelBundle(CONFIG, helpers.random_params(CONFIG, std=0.1))
    cls.cond = helpers.random_condition(CONFIG, 2)
    cls.other_cond = helpers.random_condition(CONFIG, 2, seed=9)

  @parameterized.parameters(("sequential", "learned"), ("jacobi", "learned"), ("jacobi", "score"),
                            ("sequential", "none"))
  def test_stream_equals_generate(self, method, denoise):
    """Same programs on the same inputs: bit for bit, over several window slides (11 frames,
    window 4), with guidance; the denoiser's look-ahead is waited for (zeros stand in for the
    frames after it, so a frame yielded too early would differ)."""
    sampler = VideoSampler(self.bundle, _options(method, denoise=denoise))
    generated = np.asarray(sampler.generate(None, 11, cond=self.cond, seed=3))
    np.testing.assert_array_equal(_streamed(sampler.stream(None, 11, seed=3, cond=self.cond)), generated)

  def test_text_in_frame_local_shallow_blocks_streams_as_generate(self):
    """cond_top_only=False: each frame's shallow inverses read the stream's condition at that
    frame (guided), so the stream is still `generate`, and a switch reaches the shallow blocks."""
    config = CONFIG.replace(cond_top_only=False)
    sampler = VideoSampler(ModelBundle(config, helpers.random_params(config, std=0.1)), _options("jacobi"))
    generated = np.asarray(sampler.generate(None, 7, cond=self.cond, seed=3))
    np.testing.assert_array_equal(_streamed(sampler.stream(None, 7, seed=3, cond=self.cond)), generated)
    stream = sampler.stream(None, 7, seed=3, cond=self.cond)
    before = [np.asarray(next(stream)) for _ in range(2)]
    first_switched = stream.set_prompt(cond=self.other_cond)
    frames = np.concatenate([np.stack(before, axis=1), _streamed(stream)], axis=1)
    np.testing.assert_array_equal(frames[:, :first_switched - 2], generated[:, :first_switched - 2])
    self.assertTrue((np.abs(frames - generated).max(axis=(0, 2, 3, 4)) > 0)[first_switched:].all())

  def test_stream_with_a_first_frame_equals_generate(self):
    sampler = VideoSampler(self.bundle, _options("sequential"))
    first = np.asarray(sampler.generate(None, 1, cond=self.cond, seed=5))[:, :1]
    generated = np.asarray(sampler.generate(None, 6, cond=self.cond, seed=3, condition_video=first))
    streamed = _streamed(sampler.stream(None, 6, seed=3, cond=self.cond, condition_video=first))
    np.testing.assert_array_equal(streamed, generated)

  def test_a_clip_starts_as_a_longer_one(self):
    """Per-frame noise: a clip's frames do not depend on how many are asked for, except in the
    last denoising window, which is moved back to end with the clip."""
    sampler = VideoSampler(self.bundle, _options("sequential", denoise="none"))
    short = np.asarray(sampler.generate(None, 6, cond=self.cond, seed=3))
    long = np.asarray(sampler.generate(None, 10, cond=self.cond, seed=3))
    np.testing.assert_array_equal(long[:, :6], short)

  def test_prompt_switch_changes_only_the_frames_after_it(self):
    sampler = VideoSampler(self.bundle, _options("sequential"))
    reference = _streamed(sampler.stream(None, 11, seed=3, cond=self.cond))
    stream = sampler.stream(None, 11, seed=3, cond=self.cond)
    before = [np.asarray(next(stream)) for _ in range(4)]
    first_switched = stream.set_prompt(cond=self.other_cond)
    after = _streamed(stream)
    self.assertGreaterEqual(first_switched, 4)  # the denoiser's look-ahead ran ahead of frame 3
    frames = np.concatenate([np.stack(before, axis=1), after], axis=1)
    # Frames whose latents were inverted before the switch and whose denoising window holds only
    # such frames are unchanged; every later frame is conditioned on the new prompt.
    unchanged = first_switched - 2  # frame f's denoised value reads latent frames up to f + 2
    np.testing.assert_array_equal(frames[:, :unchanged], reference[:, :unchanged])
    changed = np.abs(frames - reference).max(axis=(0, 2, 3, 4)) > 0
    self.assertTrue(changed[first_switched:].all(), changed)
    with self.assertRaisesRegex(UserError, "batch 1 but the stream has 2"):
      stream.set_prompt(cond=self.cond[:1])
    with self.assertRaisesRegex(UserError, "latent frame 2 is already inverted"):
      stream.set_prompt(cond=self.cond, frame=2)

  def test_a_switch_scheduled_at_a_frame_applies_there(self):
    """set_prompt(frame=6) before the stream starts: latent frames 0..5 as without the switch
    (pixel frames 0..3 read only them), frames 6.. as after a switch at frame 6."""
    sampler = VideoSampler(self.bundle, _options("jacobi"))
    reference = _streamed(sampler.stream(None, 11, seed=3, cond=self.cond))
    stream = sampler.stream(None, 11, seed=3, cond=self.cond)
    self.assertEqual(stream.set_prompt(cond=self.other_cond, frame=6), 6)
    frames = _streamed(stream)
    np.testing.assert_array_equal(frames[:, :4], reference[:, :4])
    changed = np.abs(frames - reference).max(axis=(0, 2, 3, 4)) > 0
    self.assertTrue(changed[6:].all(), changed)

  def test_unbounded_stream_keeps_memory_and_programs_flat(self):
    """Past the first window nothing grows: the live device memory and every compiled
    function's cache are the same at frames 12, 24 and 48 (window 4: 9, 21, 45 slides)."""
    sampler = VideoSampler(self.bundle, _options("jacobi"))
    stream = sampler.stream(None, None, seed=3, cond=self.cond)
    seen = []
    for frame in range(48):
      next(stream)
      if frame + 1 in (12, 24, 48):
        gc.collect()
        seen.append((sum(a.nbytes for a in jax.live_arrays()), [f._cache_size() for f in sampler.compiled_functions()]))
    self.assertEqual(seen[0], seen[1])
    self.assertEqual(seen[0], seen[2])

  def test_stream_errors_name_the_problem(self):
    sampler = VideoSampler(self.bundle, _options("sequential", window=None, context=None))
    with self.assertRaisesRegex(UserError, "without num_frames needs a sliding window"):
      sampler.stream(None, None, cond=self.cond)
    reference = VideoSampler(self.bundle, _options("jacobi", jacobi=JacobiOptions(reference_compatible=True)))
    with self.assertRaisesRegex(UserError, "reference_compatible"):
      reference.stream(None, 4, cond=self.cond)

  def test_denoise_windows_cover_every_frame_once(self):
    for frames, window, overlap in ((11, 4, 1), (11, 4, 3), (4, 4, 3), (9, 3, 2)):
      covered = [f for start, keep in denoise_windows(frames, window, overlap) for f in range(keep, start + window)]
      self.assertEqual(covered, list(range(frames)))
    unbounded = denoise_windows(None, 4, 1)
    self.assertEqual([next(unbounded) for _ in range(3)], [(0, 0), (3, 4), (6, 7)])


class StreamThroughCausalVAETest(absltest.TestCase):
  """Latent frames decoded in the autoencoder's chunks as they come: a causal VAE compressing
  time 4x (a latent frame is 4 pixel frames) streams the frames `generate` decodes."""

  def test_stream_equals_generate(self):
    vae_config = causal_vae.CausalVAEConfig(latent_channels=2, channels=(8, 8, 8))
    module = causal_vae.CausalVAE(vae_config)
    video = np.zeros((1, 5, 32, 32, 3), np.float32)
    vae_params = jax.jit(module.init)(jax.random.PRNGKey(0), video, jax.random.PRNGKey(1))["params"]
    directory = self.create_tempdir().full_path + "/vae"
    vae_checkpoint.save(directory, vae_config, vae_params)
    bundle = ModelBundle(CONFIG,
                         helpers.random_params(CONFIG, std=0.1),
                         autoencoder_config=AutoencoderConfig(kind="causal_vae", checkpoint=directory, decode_chunk=2))
    cond = helpers.random_condition(CONFIG, 2)
    sampler = VideoSampler(bundle, _options("sequential"))
    generated = np.asarray(sampler.generate(None, 25, cond=cond, seed=1))  # 7 latent frames
    streamed = _streamed(sampler.stream(None, 25, seed=1, cond=cond))
    self.assertEqual(generated.shape[1], 25)
    np.testing.assert_array_equal(streamed, generated)


if __name__ == "__main__":
  absltest.main()
