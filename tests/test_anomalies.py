"""Procedural anomalies on moving shapes, and the ROC-AUC of the anomaly evaluation."""

import os

import numpy as np
from absl.testing import absltest

from data_pipeline import anomalies
from data_pipeline.shapes import ShapesConfig
from experiments import eval_anomaly


class AnomaliesTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.generator = anomalies.AnomalousShapes(
        ShapesConfig(num_frames=8, height=16, width=16, max_objects=1, num_examples=1000, seed=4))

  def test_each_kind_changes_the_clip_from_its_onset_only(self):
    for kind in anomalies.KINDS:
      for index in range(6):
        with self.subTest(kind=kind, index=index):
          clip = self.generator[kind, index]
          onset, reference = clip["onset"], clip["reference"]
          self.assertBetween(onset, 1, 6)
          np.testing.assert_array_equal(clip["video"][:onset], reference[:onset])
          self.assertFalse(np.array_equal(clip["video"][onset], reference[onset]))
          self.assertEqual(clip["caption"], self.generator.normal(clip["index"])["caption"])
          if kind != "border_pass":  # the others change the source's own clip
            np.testing.assert_array_equal(reference, self.generator.normal(clip["index"])["video"])

  def test_deterministic_and_kind_specific(self):
    a, b = self.generator["teleport", 3], self.generator["teleport", 3]
    np.testing.assert_array_equal(a["video"], b["video"])
    frozen = self.generator["freeze", 0]
    np.testing.assert_array_equal(
        frozen["video"][frozen["onset"]:],
        np.broadcast_to(frozen["video"][frozen["onset"] - 1], frozen["video"][frozen["onset"]:].shape))
    colored = self.generator["color", 0]
    colours = lambda frame: {tuple(p) for p in frame.reshape(-1, 3) if p.any()}
    self.assertNotEqual(colours(colored["video"][0]), colours(colored["video"][-1]))
    passing = self.generator["border_pass", 0]
    self.assertLess(int(passing["video"][-1].astype(bool).sum()), int(passing["video"][0].astype(bool).sum()))
    with self.assertRaisesRegex(ValueError, "unknown anomaly kind"):
      self.generator["melt", 0]

  def test_roc_auc(self):
    self.assertEqual(eval_anomaly.roc_auc([3, 4], [1, 2]), 1.0)
    self.assertEqual(eval_anomaly.roc_auc([1, 2], [3, 4]), 0.0)
    self.assertEqual(eval_anomaly.roc_auc([1, 2], [1, 2]), 0.5)
    rng = np.random.default_rng(0)
    self.assertAlmostEqual(eval_anomaly.roc_auc(rng.normal(1, 1, 4000), rng.normal(0, 1, 4000)), 0.76, delta=0.02)


class EvaluationTest(absltest.TestCase):

  def test_report_on_a_moving_shapes_model(self):
    """The evaluation runs end to end on a (random-weight) pixel model of 8-frame 8 x 8 clips."""
    from experiments.configs import tiny_video
    from starflow_jax import fileio
    from tests import helpers
    workdir = self.create_tempdir().full_path
    config = tiny_video.get_config("micro")
    config.data.shapes.update(num_frames=8, height=8, width=8, min_speed=0.1, max_speed=0.15)
    fileio.write_json(os.path.join(workdir, "config.json"), config.to_dict())
    helpers.save_pixel_video_model(os.path.join(workdir, "model"), num_frames=8)
    report = eval_anomaly.evaluate(workdir, num_clips=4, calibration_clips=4)
    self.assertEqual(set(report["kinds"]), set(anomalies.KINDS))
    for row in report["kinds"].values():
      for name in (*eval_anomaly.SCORES, "localised", "localised_within_1"):
        self.assertBetween(row[name], 0.0, 1.0)


if __name__ == "__main__":
  absltest.main()
