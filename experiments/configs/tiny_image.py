"""Tiny class-conditional image model on scikit-learn's 8x8 digits (or shapes frames).

  python -m experiments.main --config=experiments/configs/tiny_image.py --workdir=/tmp/tiny_image
  python -m experiments.main --config=experiments/configs/tiny_image.py:shapes --workdir=...

`digits` needs the optional scikit-learn extra (`pip install -e .[digits]`); it reports
bits per dimension on real data without a download. A few minutes on a 2-core CPU.
"""

from experiments.configs import base


def get_config(arg: str = "digits"):
  c = base.base_config()
  if arg in ("digits", "digits_smoke"):
    c.data.update(source="digits", digits_size=8)
    c.model.update(in_channels=1,
                   img_size=8,
                   patch_size=1,
                   channels=64,
                   top_block_channels=64,
                   num_blocks=3,
                   layers_per_block=(1, 1, 2),
                   head_dim=32,
                   num_classes=10,
                   cond_top_only=True)
  elif arg in ("shapes", "shapes_smoke"):
    c.data.shapes.update(num_frames=1, height=16, width=16)
    c.model.update(in_channels=3,
                   img_size=16,
                   patch_size=2,
                   channels=64,
                   top_block_channels=128,
                   num_blocks=3,
                   layers_per_block=(1, 1, 2),
                   head_dim=32,
                   txt_size=16,
                   txt_dim=64,
                   cond_top_only=True)
    c.text.update(kind="words")
  else:
    raise ValueError(f"unknown config argument {arg!r}; use digits, shapes (optionally _smoke)")
  c.train.update(batch_size=32, num_steps=2000, lr=1e-3, warmup_steps=100, noise_std=0.05)
  c.sample.update(guidance=1.0)
  if arg.endswith("_smoke"):
    c.train.update(num_steps=10, warmup_steps=2, batch_size=8)
    c.log.update(every_steps=1, progress=False)
  return c
