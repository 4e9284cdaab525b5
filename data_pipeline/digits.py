"""scikit-learn's bundled 8x8 handwritten digits: real image data with no download.

1797 grey 8x8 images (values 0..16, scaled to 0..255 here) with labels 0-9. The first 1500 are
the training split, the rest the eval split. Needs the optional extra: pip install -e .[digits]
"""

from __future__ import annotations

import numpy as np

from starflow_jax.errors import UserError

VOCABULARY = ["a", "handwritten", "digit"] + [str(i) for i in range(10)]
TRAIN_SIZE = 1500


def _load():
  try:
    from sklearn.datasets import load_digits
  except ImportError as e:
    raise UserError("data.source='digits' needs scikit-learn: pip install -e .[digits] "
                    "(or pip install scikit-learn)") from e
  digits = load_digits()
  images = np.clip(digits.images * 16.0, 0, 255).astype(np.uint8)  # [N, 8, 8]
  return images, digits.target.astype(np.int32)


class DigitsSource:
  """{'video': uint8 [1, size, size, 1], 'label', 'caption'} for split 'train' or 'eval'."""

  def __init__(self, split: str = "train", size: int = 8):
    images, labels = _load()
    if split == "train":
      images, labels = images[:TRAIN_SIZE], labels[:TRAIN_SIZE]
    elif split in ("eval", "test"):
      images, labels = images[TRAIN_SIZE:], labels[TRAIN_SIZE:]
    else:
      raise UserError(f"digits split {split!r} must be 'train' or 'eval'")
    if size != 8:
      if size % 8:
        raise UserError(f"digits_size={size} must be a multiple of 8 (nearest-neighbour upscaling)")
      f = size // 8
      images = np.repeat(np.repeat(images, f, axis=1), f, axis=2)
    self.images, self.labels, self.split = images, labels, split

  def __len__(self) -> int:
    return len(self.images)

  def __repr__(self) -> str:
    return f"DigitsSource({self.split!r}, {len(self)} images)"

  def __getitem__(self, index: int) -> dict:
    label = int(self.labels[index])
    return {
        "video": self.images[index][None, :, :, None],
        "label": np.int32(label),
        "caption": f"a handwritten digit {label}"
    }
