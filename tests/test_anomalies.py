"""Procedural anomalies on moving shapes, and the ROC-AUC of the anomaly evaluation."""

import os

import numpy as np
from absl.testing import absltest

from data_pipeline import anomalies
from data_pipeline.shapes import ShapesConfig
from experiments import eval_anomaly
from starflow_jax.errors import UserError


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

  def test_teleport_jumps_a_third_of_the_frame_on_every_clip(self):
    """The jump is never clipped at a wall: the object's centroid moves >= side / 3 (less the
    centroid's rasterisation error, under a pixel) at the onset and keeps that offset after it."""
    centroid = lambda frame: np.argwhere(frame.any(axis=-1)).mean(axis=0)  # [2], one object
    for index in range(24):
      clip = self.generator["teleport", index]
      for t in range(clip["onset"], len(clip["video"])):
        jump = np.linalg.norm(centroid(clip["video"][t]) - centroid(clip["reference"][t]))
        self.assertGreater(jump, 16 / 3 - 1, msg=f"clip {index} frame {t}")

  def test_roc_auc(self):
    self.assertEqual(eval_anomaly.roc_auc([3, 4], [1, 2]), 1.0)
    self.assertEqual(eval_anomaly.roc_auc([1, 2], [3, 4]), 0.0)
    self.assertEqual(eval_anomaly.roc_auc([1, 2], [1, 2]), 0.5)
    rng = np.random.default_rng(0)
    self.assertAlmostEqual(eval_anomaly.roc_auc(rng.normal(1, 1, 4000), rng.normal(0, 1, 4000)), 0.76, delta=0.02)


class ScoreTest(absltest.TestCase):
  """The clip-relative score on synthetic per-frame and per-token NLLs (5 frames, 16 tokens)."""

  def setUp(self):
    super().setUp()
    rng = np.random.default_rng(0)
    # (NLL per frame, PNG nats per frame, NLL per token): the model costs 40 nats more than PNG
    self.clip = lambda: (rng.normal(100, 5, 5), rng.normal(60, 5, 5), rng.normal(6, 1, (5, 16)))
    self.baseline = eval_anomaly.Baseline([eval_anomaly.components(*self.clip()) for _ in range(64)])
    self.score = lambda nll, png, token: self.baseline.scores(eval_anomaly.components(nll, png, token))

  def test_what_a_clip_costs_in_every_frame_cancels(self):
    nll, png, token = self.clip()
    shifted_token = token.copy()
    shifted_token[1:] += np.linspace(-3, 3, 16)  # a costlier object in some positions, every frame
    shifted_nll = nll.copy()
    shifted_nll[1:] += 40.0  # and in total
    plain, shifted = self.score(nll, png, token), self.score(shifted_nll, png, shifted_token)
    self.assertAlmostEqual(shifted["relative_surprise"], plain["relative_surprise"], places=9)
    self.assertGreater(shifted["frame_surprise"], plain["frame_surprise"] + 4)  # the absolute one moves

  def test_a_surprising_frame_is_found_and_scores_high(self):
    nll, png, token = self.clip()
    normal = [self.score(*self.clip())["relative_surprise"] for _ in range(64)]
    token[3, 5] += 12.0  # one token of frame 3 is very unlikely
    nll[3] += 12.0
    row = self.score(nll, png, token)
    self.assertEqual(row["argmax"], 3)
    self.assertGreater(row["relative_surprise"], max(normal))

  def test_a_frame_that_gets_simpler_without_getting_likelier_scores_high(self):
    """An object that has left through the border: the last frame is 60 nats shorter to a PNG
    coder, the model's NLL of it does not drop. Only the complexity term sees it."""
    normal = [self.score(*self.clip())["relative_surprise"] for _ in range(64)]
    nll, png, token = self.clip()
    emptied = png.copy()
    emptied[4] -= 60.0
    plain, row = self.score(nll, png, token), self.score(nll, emptied, token)
    self.assertEqual((row["frame_surprise"], row["token_surprise"]), (plain["frame_surprise"], plain["token_surprise"]))
    self.assertGreater(row["relative_surprise"], max(normal))


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
    report = eval_anomaly.evaluate(workdir, num_clips=4, calibration_clips=4, noise_samples=1)
    self.assertEqual(set(report["kinds"]), set(anomalies.KINDS))
    for row in report["kinds"].values():
      for name in (*eval_anomaly.SCORES, "localised", "localised_within_1"):
        self.assertBetween(row[name], 0.0, 1.0)
    for offset in (9999, -1):
      with self.assertRaisesRegex(UserError, f"offset={offset} with 4 clips leaves"):
        eval_anomaly.evaluate(workdir, num_clips=4, calibration_clips=4, offset=offset)


if __name__ == "__main__":
  absltest.main()
