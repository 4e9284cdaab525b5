"""Latents <-> tokens: patchify's channel order, exact round trips, the block orders."""

import jax
import numpy as np
from absl.testing import absltest, parameterized

from starflow_jax import tokens


class PatchifyTest(absltest.TestCase):

  def test_round_trip_and_official_channel_order(self):
    x = np.arange(1 * 2 * 4 * 6 * 3, dtype=np.float32).reshape(1, 2, 4, 6, 3)  # [B, T, H, W, C]
    tok, grid = tokens.patchify(x, 2)
    self.assertEqual(tok.shape, (1, 2, 6, 12))
    self.assertEqual((grid.frames, grid.height, grid.width), (2, 2, 3))
    # Token (row 0, column 1) of frame 1 holds pixels [0:2, 2:4] in (p1, p2, c) order.
    np.testing.assert_array_equal(tok[0, 1, 1], x[0, 1, 0:2, 2:4, :].reshape(-1))
    np.testing.assert_array_equal(tokens.unpatchify(tok, grid, 2), x)

  def test_images_are_one_frame_videos(self):
    image = np.zeros((2, 4, 4, 3), np.float32)
    video, is_image = tokens.as_video(image)
    self.assertTrue(is_image)
    self.assertEqual(video.shape, (2, 1, 4, 4, 3))
    with self.assertRaisesRegex(ValueError, "expected latents"):
      tokens.as_video(np.zeros((4, 4, 3)))
    with self.assertRaisesRegex(ValueError, "not divisible by patch_size=3"):
      tokens.patchify(video, 3)


class OrderTest(parameterized.TestCase):

  @parameterized.parameters("identity", "flip", "flip_in_frame")
  def test_orders_are_involutions(self, order):
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 12, 3))
    np.testing.assert_array_equal(tokens.unpermute(tokens.permute(x, order, 4), order, 4), x)

  def test_flip_in_frame_keeps_frames_in_time_order(self):
    x = np.arange(8, dtype=np.float32).reshape(1, 8, 1)  # 2 frames of 4 tokens
    np.testing.assert_array_equal(tokens.permute(x, "flip_in_frame", 4)[0, :, 0], [3, 2, 1, 0, 7, 6, 5, 4])
    np.testing.assert_array_equal(tokens.permute(x, "flip", 4)[0, :, 0], [7, 6, 5, 4, 3, 2, 1, 0])
    with self.assertRaisesRegex(ValueError, "unknown token order"):
      tokens.permute(x, "shuffle", 4)


if __name__ == "__main__":
  absltest.main()
