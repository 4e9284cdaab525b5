"""tensorflow-datasets sources read through ArrayRecord (`tfds.data_source`): no tf.data anywhere.

Supported (data.tfds.name):
  video  moving_mnist, bair_robot_pushing_small, ucf101 (any ucf101/<config>)
  image  mnist, cifar10, imagenet_resized/64x64 (downsampled ImageNet with labels),
         downsampled_imagenet/64x64
Each example becomes {'video': uint8 [T, H, W, C], 'caption': str, 'label': int (if any)}; the
pipeline then samples a clip (length, stride, random start), centre-crops and resizes it.
Prepare a dataset once, on a machine with internet access (see WORKSPACE.md):
  python -m data_pipeline.prepare_tfds --name=ucf101 --data_dir=/data/tfds
"""

from __future__ import annotations

import dataclasses
import re

import grain
import ml_collections
import numpy as np
from PIL import Image

from starflow_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """Where the pixels, labels and captions of a tfds dataset are."""

  pixels: str  # feature holding the video or image
  is_video: bool
  label: str | None = None
  caption: str = ""  # template; "{label}" becomes the label's name
  default_split: str = "train"


SPECS = {
    "moving_mnist": DatasetSpec("image_sequence", True, caption="handwritten digits moving", default_split="test"),
    "bair_robot_pushing_small": DatasetSpec("image_main", True, caption="a robot arm pushing objects"),
    "ucf101": DatasetSpec("video", True, label="label", caption="a video of {label}"),
    "mnist": DatasetSpec("image", False, label="label", caption="a handwritten digit {label}"),
    "cifar10": DatasetSpec("image", False, label="label", caption="a photo of a {label}"),
    "imagenet_resized": DatasetSpec("image", False, label="label", caption="a photo of a {label}"),
    "downsampled_imagenet": DatasetSpec("image", False, caption=""),
}


def spec_for(name: str) -> DatasetSpec:
  base = name.split("/")[0].split(":")[0]
  if base not in SPECS:
    raise UserError(f"tfds dataset {name!r} is not supported; choose one of {sorted(SPECS)}")
  return SPECS[base]


def _video_features_without_tensorflow() -> None:
  """tfds 4.9's Video feature calls tf.dtypes.as_dtype in its constructor, so loading any video
  dataset's metadata imports TensorFlow, although tfds decodes examples with numpy + PIL
  (ExampleParserNp). When TensorFlow is absent, give that one call a numpy equivalent."""
  try:
    import tensorflow  # noqa: F401
    return
  except ImportError:
    pass
  import types
  from tensorflow_datasets.core.features import video_feature
  if not isinstance(getattr(video_feature, "tf", None), types.SimpleNamespace):
    video_feature.tf = types.SimpleNamespace(dtypes=types.SimpleNamespace(as_dtype=np.dtype),
                                             uint8=np.uint8,
                                             uint16=np.uint16)


def _missing_data_error(name: str, split: str, data_dir: str, error: Exception) -> ValueError:
  where = data_dir or "~/tensorflow_datasets"
  return ValueError(f"tfds dataset {name!r} (split {split!r}) is not prepared in {where} ({type(error).__name__}). "
                    f"Prepare it once on a machine with internet access:\n"
                    f"  python -m data_pipeline.prepare_tfds --name={name} --data_dir={where}\n"
                    f"(or: tfds build {name} --data_dir={where} --file_format=array_record), then point "
                    f"config.data.tfds.data_dir at that directory. Nothing is downloaded during training.")


class TfdsSource:
  """Random-access source over a prepared tfds dataset (ArrayRecord), with captions from labels."""

  def __init__(self, name: str, split: str, data_dir: str = ""):
    import tensorflow_datasets as tfds
    self.name, self.split, self.spec = name, split, spec_for(name)
    if self.spec.is_video:
      _video_features_without_tensorflow()
    try:
      self.source = tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
    except Exception as e:  # DatasetNotFoundError, missing array_record files, ...
      raise _missing_data_error(name, split, data_dir, e) from e
    features = self.source.dataset_info.features
    if self.spec.pixels not in features:
      raise UserError(f"{name}: expected a feature {self.spec.pixels!r}, found {sorted(features)}")
    self.label_names = None
    if self.spec.label and self.spec.label in features and hasattr(features[self.spec.label], "names"):
      self.label_names = list(features[self.spec.label].names)

  def __len__(self) -> int:
    return len(self.source)

  def __repr__(self) -> str:
    return f"TfdsSource({self.name!r}, split={self.split!r}, {len(self)} examples)"

  def caption(self, label: int | None) -> str:
    text = self.spec.caption
    if "{label}" in text:
      name = self.label_names[label] if self.label_names else str(label)
      text = text.format(label=name.replace("_", " ").lower())
    return text

  def __getitem__(self, index: int) -> dict:
    example = self.source[int(index)]
    pixels = np.asarray(example[self.spec.pixels])
    if not self.spec.is_video:
      pixels = pixels[None]
    if pixels.ndim != 4:
      raise UserError(f"{self.name}[{index}]: expected frames [T, H, W, C], got shape {pixels.shape}")
    out = {"video": pixels.astype(np.uint8)}
    label = None
    if self.spec.label and self.spec.label in example:
      label = int(example[self.spec.label])
      out["label"] = np.int32(label)
    out["caption"] = self.caption(label)
    return out


class RandomClip(grain.transforms.RandomMap):
  """Samples `num_frames` frames `stride` apart from a random start (training) or the start."""

  def __init__(self, num_frames: int, stride: int = 1, random_start: bool = True):
    if num_frames < 1 or stride < 1:
      raise UserError(f"clip of {num_frames} frames with stride {stride}: both must be >= 1")
    self.num_frames, self.stride, self.random_start = num_frames, stride, random_start

  def random_map(self, element: dict, rng: np.random.Generator) -> dict:
    video = element["video"]
    span = (self.num_frames - 1) * self.stride + 1
    if video.shape[0] < span:
      raise UserError(f"a clip of {self.num_frames} frames with stride {self.stride} needs {span} "
                      f"frames but the video has {video.shape[0]}; use fewer frames or a smaller stride")
    start = int(rng.integers(0, video.shape[0] - span + 1)) if self.random_start else 0
    return {**element, "video": video[start:start + span:self.stride]}


class CenterCropResize(grain.transforms.Map):
  """Centre-crops every frame to a square (when the target is square) and resizes (bilinear)."""

  def __init__(self, height: int, width: int):
    self.height, self.width = height, width

  def map(self, element: dict) -> dict:
    video = element["video"]
    t, h, w, c = video.shape
    if (h, w) == (self.height, self.width):
      return element
    frames = []
    for frame in video:
      image = Image.fromarray(frame[..., 0] if c == 1 else frame)
      if self.height == self.width:
        side = min(h, w)
        image = image.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
      image = image.resize((self.width, self.height), Image.BILINEAR)
      frames.append(np.asarray(image).reshape(self.height, self.width, c))
    return {**element, "video": np.stack(frames).astype(np.uint8)}


class RandomFlip(grain.transforms.RandomMap):

  def random_map(self, element: dict, rng: np.random.Generator) -> dict:
    if rng.random() < 0.5:
      return {**element, "video": element["video"][:, :, ::-1]}
    return element


def build_tfds_source(data: ml_collections.ConfigDict, split: str = "train") -> TfdsSource:
  cfg = data.tfds
  if not cfg.name:
    raise UserError("data.source='tfds' needs data.tfds.name (e.g. 'ucf101', 'moving_mnist')")
  tfds_split = cfg.split or spec_for(cfg.name).default_split
  if split != "train":
    tfds_split = cfg.get("eval_split", "") or tfds_split
  return TfdsSource(cfg.name, tfds_split, cfg.data_dir)


def transforms(data: ml_collections.ConfigDict, training: bool = True):
  """(deterministic transforms, random transforms) turning examples into fixed-size clips."""
  cfg = data.tfds
  spec = spec_for(cfg.name)
  random = []
  if spec.is_video:
    random.append(RandomClip(cfg.num_frames, cfg.stride, random_start=training))
  deterministic = [CenterCropResize(cfg.height, cfg.width)]
  if cfg.get("random_flip", False) and training:
    random.append(RandomFlip())
  return deterministic, random


def caption_vocabulary(data: ml_collections.ConfigDict) -> list[str]:
  """Words of every caption the dataset can produce (label names included)."""
  spec = spec_for(data.tfds.name)
  words = set(re.findall(r"[a-z0-9]+", spec.caption.replace("{label}", "").lower()))
  if spec.label:
    try:
      source = build_tfds_source(data)
      names = source.label_names or [str(i) for i in range(10)]
    except ValueError:
      names = [str(i) for i in range(10)]
    for name in names:
      words |= set(re.findall(r"[a-z0-9]+", name.replace("_", " ").lower()))
  return sorted(words)


def example_shape(data: ml_collections.ConfigDict) -> tuple[int, int, int, int]:
  cfg = data.tfds
  spec = spec_for(cfg.name)
  channels = 1 if spec_for(cfg.name) in (SPECS["moving_mnist"], SPECS["mnist"]) else 3
  return (cfg.num_frames if spec.is_video else 1), cfg.height, cfg.width, channels
