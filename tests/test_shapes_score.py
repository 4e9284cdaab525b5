"""The moving-shapes scorer's per-frame metrics (long-video drift): exact on clips built to pass
or fail each one."""

import numpy as np
from absl.testing import absltest

from data_pipeline import shapes_score

PALETTE = ("red", "green", "blue", "yellow")


def square_clip(positions, colour=(255, 0, 0), size=16, side=4) -> np.ndarray:
  """uint8 [T, size, size, 3]: a side x side square with its top-left corner at each (row, col)."""
  video = np.zeros((len(positions), size, size, 3), np.uint8)
  for t, (r, c) in enumerate(positions):
    video[t, r:r + side, c:c + side] = colour
  return video


class FrameMetricsTest(absltest.TestCase):

  def test_a_steady_glide_agrees_everywhere(self):
    clip = square_clip([(6, 10 - 2 * t) for t in range(5)])  # left, 2 px a frame
    m = shapes_score.frame_metrics(clip, "a red square moving left", PALETTE)
    np.testing.assert_array_equal(m["visible"], np.ones(5))
    np.testing.assert_array_equal(m["colour"], np.ones(5))
    np.testing.assert_array_equal(m["axis"], [np.nan, 1, 1, 1, 1])
    np.testing.assert_array_equal(m["continuity"], [np.nan, np.nan, 1, 1, 1])
    self.assertTrue(np.all(m["sharpness"] > 0))

  def test_each_failure_is_seen_where_it_happens(self):
    # frames: glide left, jump down (wrong axis, not continuous), stall, vanish, wrong colour
    clip = square_clip([(6, 10), (6, 8), (10, 8), (10, 8), (0, 0), (10, 8)])
    clip[4] = 0
    clip[5] = square_clip([(10, 8)], colour=(0, 0, 255))[0]
    m = shapes_score.frame_metrics(clip, "a red square moving left", PALETTE)
    np.testing.assert_array_equal(m["visible"], [1, 1, 1, 1, 0, 1])
    np.testing.assert_array_equal(m["colour"], [1, 1, 1, 1, np.nan, 0])
    np.testing.assert_array_equal(m["axis"], [np.nan, 1, 0, 0, np.nan, np.nan])
    np.testing.assert_array_equal(m["continuity"], [np.nan, np.nan, 0, 0, np.nan, np.nan])

  def test_a_bounce_keeps_the_axis_and_breaks_continuity(self):
    clip = square_clip([(6, 4), (6, 2), (6, 0), (6, 2)])  # left into the border, then back
    m = shapes_score.frame_metrics(clip, "a red square moving left", PALETTE)
    np.testing.assert_array_equal(m["axis"], [np.nan, 1, 1, 1])
    np.testing.assert_array_equal(m["continuity"], [np.nan, np.nan, 1, 0])

  def test_blur_lowers_the_sharpness(self):
    sharp = square_clip([(6, 6)])[0]
    blurred = sharp.astype(np.float64)
    for axis in (0, 1):
      blurred = (np.roll(blurred, 1, axis) + blurred + np.roll(blurred, -1, axis)) / 3
    m = shapes_score.frame_metrics(np.stack([sharp, blurred.round().astype(np.uint8)]), "a red square moving up",
                                   PALETTE)
    self.assertLess(m["sharpness"][1], 0.5 * m["sharpness"][0])

  def test_windows_average_over_clips_and_frames_leaving_out_nan(self):
    a = {name: np.array([1.0, np.nan, 0.0, 0.0]) for name in shapes_score.FRAME_METRICS}
    b = {name: np.array([1.0, 0.0, 1.0, np.nan]) for name in shapes_score.FRAME_METRICS}
    windows = shapes_score.windowed([a, b], 2)
    for name in shapes_score.FRAME_METRICS:
      self.assertEqual(windows[name], [2 / 3, 1 / 3])


class NextStepAgreementTest(absltest.TestCase):

  def test_reversals_and_cosines_of_predicted_steps(self):
    """Two real clips at frame 3: one glides left, one bounces (left, then right); the model
    predicts a glide for both: it reverses nowhere, agrees where the clip glides (cosine 1) and
    disagrees at the bounce (cosine -1). An empty prediction is left out."""
    glide = square_clip([(6, 10 - 2 * t) for t in range(4)])
    bounce = square_clip([(6, 6), (6, 4), (6, 2), (6, 4)])
    real = np.stack([glide, bounce, glide])
    predicted = np.stack([glide[3], square_clip([(6, 0)])[0], np.zeros_like(glide[3])])
    got = shapes_score.next_step_agreement(real, predicted, 3)
    self.assertEqual(got["clips"], 2)
    self.assertEqual((got["real_reversals"], got["predicted_reversals"]), (0.5, 0.0))
    self.assertAlmostEqual(got["cosine_elsewhere"], 1.0, places=6)
    self.assertAlmostEqual(got["cosine_at_bounces"], -1.0, places=6)
    # ... and a model that bounces with the clip agrees there.
    got = shapes_score.next_step_agreement(real[1:2], bounce[3:4], 3)
    self.assertEqual((got["predicted_reversals"], got["cosine_at_bounces"]), (1.0, 1.0))
    self.assertTrue(np.isnan(got["cosine_elsewhere"]))


if __name__ == "__main__":
  absltest.main()
