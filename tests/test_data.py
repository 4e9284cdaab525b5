"""Input pipelines: the procedural dataset, grain options, resumption, sharding, bad inputs."""

import os

import numpy as np
from absl.testing import absltest

from data_pipeline import pipeline
from data_pipeline.shapes import COLORS, DIRECTIONS, MovingShapesSource, ShapesConfig, shape_mask
from starflow_jax.text.tokenizer import Tokenizer


def _source(**kw):
  return MovingShapesSource(ShapesConfig(**{"num_examples": 64, **kw}))


class ShapesTest(absltest.TestCase):

  def test_deterministic_by_seed_and_index(self):
    a, b = _source(seed=3), _source(seed=3)
    for i in (0, 5, 63):
      np.testing.assert_array_equal(a[i]["video"], b[i]["video"])
      self.assertEqual(a[i]["caption"], b[i]["caption"])
    self.assertFalse(np.array_equal(a[0]["video"], _source(seed=4)[0]["video"]))
    self.assertFalse(np.array_equal(a[0]["video"], a[1]["video"]))

  def test_any_resolution_and_length(self):
    clip = _source(num_frames=11, height=24, width=40, max_objects=3)[7]
    self.assertEqual(clip["video"].shape, (11, 24, 40, 3))
    self.assertEqual(clip["video"].dtype, np.uint8)
    self.assertEqual(clip["positions"].shape, (3, 11, 2))

  def test_metadata_matches_pixels(self):
    source = _source(num_frames=8, height=32, width=32, max_objects=3)
    colors = sorted(COLORS)
    for i in range(20):
      clip = source[i]
      k = int(clip["num_objects"])
      self.assertEqual(clip["caption"].count(" moving "), k)
      for o in range(k):
        color = colors[clip["color_ids"][o]]
        self.assertIn(f"a {color} ", clip["caption"])
        direction = list(DIRECTIONS)[clip["direction_ids"][o]]
        # The first displacement follows the captioned direction.
        step = clip["positions"][o, 1] - clip["positions"][o, 0]
        np.testing.assert_array_equal(np.sign(step), np.array(DIRECTIONS[direction]))
        # Wherever this object is drawn and not covered by a later object, the pixel has its colour.
        for t in (0, 4, 7):
          mine = shape_mask(["square", "circle", "triangle", "diamond"][clip["shape_ids"][o]], clip["positions"][o, t],
                            clip["radii"][o], 32, 32)
          for later in range(o + 1, k):
            mine &= ~shape_mask(["square", "circle", "triangle", "diamond"][clip["shape_ids"][later]],
                                clip["positions"][later, t], clip["radii"][later], 32, 32)
          self.assertTrue(mine.any())
          np.testing.assert_array_equal(clip["video"][t][mine], np.broadcast_to(COLORS[color], (mine.sum(), 3)))
      # Pixels outside every object are black.
      covered = np.zeros((8, 32, 32), bool)
      for o in range(k):
        for t in range(8):
          covered[t] |= shape_mask(["square", "circle", "triangle", "diamond"][clip["shape_ids"][o]],
                                   clip["positions"][o, t], clip["radii"][o], 32, 32)
      self.assertEqual(int(clip["video"][~covered].max(initial=0)), 0)

  def test_bounces_stay_inside(self):
    source = _source(num_frames=40, max_objects=3)
    for i in range(10):
      clip = source[i]
      for o in range(int(clip["num_objects"])):
        r = clip["radii"][o]
        self.assertTrue(np.all(clip["positions"][o] >= r - 1e-6))
        self.assertTrue(np.all(clip["positions"][o] <= 16 - r + 1e-6))

  def test_free_frames_come_before_the_first_bounce(self):
    """No object reverses within its first free_frames steps (half the clip by default); with
    free_frames=1 the first bounces come as early as the second step."""

    def first_reversal(source):  # per object: the first step that reverses the one before (or None)
      out = []
      for i in range(len(source)):
        clip = source[i]
        for o in range(int(clip["num_objects"])):
          steps = np.diff(clip["positions"][o], axis=0)
          reversed_ = np.nonzero(np.sum(steps[1:] * steps[:-1], axis=-1) < 0)[0]
          out.append(int(reversed_[0]) + 1 if len(reversed_) else None)
      return out

    default = first_reversal(_source(num_frames=8, min_speed=0.1, max_speed=0.16))
    early = first_reversal(_source(num_frames=8, min_speed=0.1, max_speed=0.16, free_frames=1))
    self.assertGreaterEqual(min(s for s in default if s is not None), 4)
    self.assertGreaterEqual(min(s for s in early if s is not None), 1)
    self.assertIn(1, early)

  def test_bad_configs(self):
    for kw, msg in ((dict(max_objects=4), "max_objects"), (dict(free_frames=8), "free_frames"),
                    (dict(shapes=("hexagon",)), "unknown shapes"), (dict(colors=("mauve",)), "unknown colours"),
                    (dict(height=2), "at least 4x4"), (dict(num_examples=0), "num_examples")):
      with self.assertRaisesRegex(ValueError, msg):
        MovingShapesSource(ShapesConfig(**kw))
    with self.assertRaises(IndexError):
      _source()[64]


class PipelineTest(absltest.TestCase):

  def _dataset(self, source, **kw):
    tokenizer = Tokenizer("words", source.config.vocabulary, 16)
    options = pipeline.PipelineOptions(**{"batch_size": 4, "seed": 1, **kw})
    return pipeline.build_dataset(source, options, [pipeline.ToTrainingExample(tokenizer, keep=("positions",))])

  def test_batches(self):
    batch = next(iter(self._dataset(_source())))
    self.assertEqual(batch["video"].shape, (4, 8, 16, 16, 3))
    self.assertEqual(batch["tokens"].shape, (4, 16))
    self.assertTrue(np.all(batch["tokens"][:, 0] == 1))  # <bos>

  def test_epochs_are_permutations(self):
    source = _source(num_examples=12)
    it = iter(self._dataset(source, batch_size=3))
    first = lambda b: [tuple(p[0, 0].round(4)) for p in b["positions"]]
    epochs = [sum((first(next(it)) for _ in range(4)), []) for _ in range(2)]
    self.assertCountEqual(epochs[0], epochs[1])
    self.assertLen(set(epochs[0]), 12)
    self.assertNotEqual(epochs[0], epochs[1])

  def test_resume_is_bit_exact(self):
    dataset = self._dataset(_source())
    it = iter(dataset)
    for _ in range(3):
      next(it)
    state = pipeline.iterator_state(it)
    expected = [next(it) for _ in range(4)]
    resumed = pipeline.restore_iterator(dataset, state)
    for want in expected:
      got = next(resumed)
      for key in want:
        np.testing.assert_array_equal(got[key], want[key])

  def test_worker_processes_give_the_same_stream(self):
    source = _source()
    serial = iter(self._dataset(source))
    parallel = iter(self._dataset(source, worker_count=2))
    for _ in range(3):
      a, b = next(serial), next(parallel)
      np.testing.assert_array_equal(a["video"], b["video"])
    state = pipeline.iterator_state(parallel)
    want = next(parallel)
    resumed = pipeline.restore_iterator(self._dataset(source, worker_count=2), state)
    np.testing.assert_array_equal(next(resumed)["video"], want["video"])

  def test_host_shards_are_disjoint_and_cover(self):
    source = _source(num_examples=30)
    seen = []
    for index in range(4):
      dataset = self._dataset(source,
                              batch_size=1,
                              shard_index=index,
                              shard_count=4,
                              num_epochs=1,
                              drop_remainder=False)
      seen.append([tuple(b["positions"][0, 0, 0].round(5)) for b in dataset])
    flat = sum(seen, [])
    self.assertLen(flat, 30)
    self.assertLen(set(flat), 30)
    for a in range(4):
      for b in range(a + 1, 4):
        self.assertEmpty(set(seen[a]) & set(seen[b]))

  def test_bad_inputs(self):
    with self.assertRaisesRegex(ValueError, "batch_size=0"):
      self._dataset(_source(), batch_size=0)
    with self.assertRaisesRegex(ValueError, "shard_index=4"):
      self._dataset(_source(), shard_index=4, shard_count=4)

    class Empty:

      def __len__(self):
        return 0

    with self.assertRaisesRegex(ValueError, "is empty"):
      pipeline.build_dataset(Empty(), pipeline.PipelineOptions(batch_size=2))
    with self.assertRaisesRegex(ValueError, "neither 'video' nor 'image'"):
      pipeline.ToTrainingExample(None).map({"caption": "x"})
    with self.assertRaisesRegex(ValueError, r"expected a video \[T, H, W, C\]"):
      pipeline.ToTrainingExample(None).map({"video": np.zeros((4, 4))})


TFDS_METADATA = os.path.join(os.path.dirname(__file__), "data", "tfds")
TFDS_PREPARED = os.path.join(os.path.dirname(__file__), "data", "tfds_prepared")


class TfdsTest(absltest.TestCase):
  """tfds sources through grain, offline: mock data with the datasets' real feature specs
  (metadata shipped in tests/data/tfds), and a tiny prepared ArrayRecord moving_mnist."""

  def _config(self, name, **kw):
    from experiments.configs import base
    c = base.base_config()
    c.data.update(source="tfds")
    c.data.tfds.update(**{"name": name, "data_dir": TFDS_METADATA, **kw})
    return c.data

  def _first_batch(self, data, batch_size=2):
    from data_pipeline import sources
    source = sources.build_source(data, "train")
    tokenizer = Tokenizer("words", sources.caption_vocabulary(data), 12)
    dataset = pipeline.build_dataset(source, pipeline.PipelineOptions(batch_size=batch_size, seed=0),
                                     sources.element_transforms(data, tokenizer, keep=("caption",)))
    return source, next(iter(dataset))

  def test_video_datasets_with_real_feature_specs(self):
    import tensorflow_datasets as tfds
    cases = (("moving_mnist", dict(split="test"), 1, "handwritten digits moving"),
             ("bair_robot_pushing_small", {}, 3, "a robot arm pushing objects"), ("ucf101/ucf101_1_256", {}, 3,
                                                                                  "a video of "))
    for name, kw, channels, caption in cases:
      policy = tfds.testing.MockPolicy.USE_CODE if name.startswith("bair") else tfds.testing.MockPolicy.USE_FILES
      with tfds.testing.mock_data(num_examples=4, data_dir=TFDS_METADATA, policy=policy):
        data = self._config(name, num_frames=5, stride=2, height=16, width=16, **kw)
        _, batch = self._first_batch(data)
      self.assertEqual(batch["video"].shape, (2, 5, 16, 16, channels), name)
      self.assertEqual(batch["video"].dtype, np.uint8)
      self.assertTrue(str(batch["caption"][0]).startswith(caption), batch["caption"][0])
      if name.startswith("ucf101"):
        self.assertIn("label", batch)
        self.assertNotIn(2, batch["tokens"][:, 1:4])  # label names are in the vocabulary (no <unk>)

  def test_image_datasets(self):
    import tensorflow_datasets as tfds
    for name, channels, caption in (("mnist", 1, "a handwritten digit"), ("cifar10", 3, "a photo of a"),
                                    ("imagenet_resized/64x64", 3, "a photo of a")):
      with tfds.testing.mock_data(num_examples=4):
        data = self._config(name, height=8, width=8)
        _, batch = self._first_batch(data)
      self.assertEqual(batch["video"].shape, (2, 1, 8, 8, channels), name)
      self.assertIn(caption, str(batch["caption"][0]))

  def test_prepared_array_record_decodes_without_tensorflow(self):
    data = self._config("moving_mnist",
                        split="test",
                        data_dir=TFDS_PREPARED,
                        num_frames=4,
                        stride=3,
                        height=64,
                        width=64)
    source, batch = self._first_batch(data, batch_size=3)
    self.assertLen(source, 3)
    self.assertEqual(batch["video"].shape, (3, 4, 64, 64, 1))
    # The fixture's square moves 1 pixel down and 2 right per frame: 3-frame stride -> 3 / 6 pixels.
    video = batch["video"][0, ..., 0]
    rows = [np.nonzero(f.max(axis=1))[0][0] for f in video]
    cols = [np.nonzero(f.max(axis=0))[0][0] for f in video]
    self.assertEqual(np.diff(rows).tolist(), [3, 3, 3])
    self.assertEqual(np.diff(cols).tolist(), [6, 6, 6])

  def test_missing_data_and_bad_clips(self):
    data = self._config("moving_mnist", split="test", data_dir=self.create_tempdir().full_path)
    from data_pipeline import sources
    with self.assertRaisesRegex(ValueError, r"(?s)not prepared in .*prepare_tfds --name=moving_mnist"):
      sources.build_source(data)
    from data_pipeline.tfds_sources import RandomClip
    with self.assertRaisesRegex(ValueError, "needs 19 frames but the video has 10"):
      RandomClip(10, 2).random_map({"video": np.zeros((10, 4, 4, 1))}, np.random.default_rng(0))
    with self.assertRaisesRegex(ValueError, "not supported"):
      sources.build_source(self._config("imagenet2012"))


class LatentsTest(absltest.TestCase):

  def test_preencode_round_trip_and_training_source(self):
    from data_pipeline import latents, preencode
    from experiments.configs import tiny_video
    config = tiny_video.get_config("micro")
    out = self.create_tempdir().full_path
    metadata = preencode.preencode(config, out, "train", num_examples=10, shard_size=4, batch_size=3, progress=False)
    self.assertEqual(metadata["splits"]["train"], 10)
    self.assertLen(latents.shard_paths(out, "train"), 3)
    source = latents.LatentSource(out, "train")
    pixels = MovingShapesSource(ShapesConfig(**{**config.data.shapes.to_dict()}))
    for i in (0, 4, 9):
      record = source[i]
      expected = (pixels[i]["video"].astype(np.float32) + 0.5) / 128.0 - 1.0  # identity autoencoder
      np.testing.assert_allclose(record["video"], expected, atol=1e-6)
      self.assertEqual(record["caption"], pixels[i]["caption"])
      self.assertEqual(record["tokens"].shape, (16,))
    with self.assertRaisesRegex(FileExistsError, "already has 3 shards"):
      preencode.preencode(config, out, "train", num_examples=2, progress=False)
    with self.assertRaisesRegex(ValueError, "has no metadata.json"):
      latents.LatentSource(self.create_tempdir().full_path)


class DigitsTest(absltest.TestCase):

  def test_digits_when_scikit_learn_is_installed(self):
    try:
      import sklearn  # noqa: F401
    except ImportError:
      self.skipTest("scikit-learn (optional extra 'digits') is not installed")
    from data_pipeline.digits import DigitsSource
    train, held_out = DigitsSource("train"), DigitsSource("eval")
    self.assertLen(train, 1500)
    self.assertLen(held_out, 297)
    element = train[0]
    self.assertEqual(element["video"].shape, (1, 8, 8, 1))
    self.assertEqual(element["caption"], f"a handwritten digit {int(element['label'])}")


class ShapesScoreTest(absltest.TestCase):
  """The prompt-adherence scorer: perfect on real clips, fooled by neither recolouring nor
  reversed time, and strict about captions it cannot parse."""

  def test_scores_real_recoloured_and_reversed_clips(self):
    from data_pipeline import shapes_score
    config = ShapesConfig(num_frames=6, height=32, width=32, max_objects=1, colors=("red", "green", "blue", "yellow"))
    source = MovingShapesSource(config)
    examples = [source[i] for i in range(24)]
    videos = np.stack([e["video"] for e in examples])
    captions = [e["caption"] for e in examples]
    real = shapes_score.score_clips(videos, captions, config.colors)
    self.assertEqual(real["colour_accuracy"], 1.0)
    self.assertGreaterEqual(real["direction_accuracy"], 0.9)  # a bounce in the first frames can hide it
    recoloured = videos[..., ::-1]  # RGB -> BGR: red reads as blue, no colour stays itself
    self.assertLess(shapes_score.score_clips(recoloured, captions, config.colors)["colour_accuracy"], 0.3)
    reversed_time = shapes_score.score_clips(videos[:, ::-1], captions, config.colors)
    self.assertLess(reversed_time["direction_accuracy"], 0.2)
    blank = shapes_score.score_clips(np.zeros_like(videos[:2]), captions[:2], config.colors)
    self.assertEqual((blank["visible"], blank["colour_accuracy"], blank["direction_accuracy"]), (0.0, 0.0, 0.0))

  def test_unparseable_caption_is_an_error(self):
    from data_pipeline import shapes_score
    with self.assertRaisesRegex(ValueError, "single-object caption"):
      shapes_score.parse_caption("a red circle moving left and a blue square moving up")


if __name__ == "__main__":
  absltest.main()
