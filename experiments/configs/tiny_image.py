"""Tiny class-conditional image model on scikit-learn's 8x8 digits (or shapes frames).

  python -m experiments.main --config=experiments/configs/tiny_image.py --workdir=/tmp/tiny_image
  python -m experiments.main --config=experiments/configs/tiny_image.py:shapes --workdir=...

`digits` needs the optional scikit-learn extra (`pip install -e .[digits]`); it reports
bits per dimension on real data without a download. A few minutes on a 2-core CPU.

`digits_official` is the official recipe on the same data, for a like-for-like comparison with
the official code: unconditional (it has no class labels), uniform dequantisation and no noise
augmentation, the official architecture (4 blocks x 2 layers, width 128, patch 2, head 32),
AdamW lr 5e-4 (betas 0.9 / 0.95, wd 1e-4), 100 warm-up steps, cosine to 0, clip 1.0, batch 64,
3000 steps. Test bits/dim: python -m experiments.score --workdir=... --dataset=eval
"""

from experiments.configs import base


def get_config(arg: str = "digits"):
  c = base.base_config()
  if arg in ("digits_official", "digits_official_smoke"):
    return _digits_official(c, smoke=arg.endswith("_smoke"))
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
    raise ValueError(f"unknown config argument {arg!r}; use digits, digits_official, shapes (optionally _smoke)")
  c.train.update(batch_size=32, num_steps=2000, lr=1e-3, warmup_steps=100, noise_std=0.05)
  c.sample.update(guidance=1.0)
  if arg.endswith("_smoke"):
    c.train.update(num_steps=10, warmup_steps=2, batch_size=8)
    c.log.update(every_steps=1, progress=False)
  return c


def _digits_official(c, smoke: bool):
  c.data.update(source="digits", digits_size=8)
  c.model.update(in_channels=1,
                 img_size=8,
                 patch_size=2,
                 channels=128,
                 top_block_channels=128,
                 num_blocks=4,
                 layers_per_block=(2, 2, 2, 2),
                 head_dim=32)
  c.train.update(
      batch_size=64,
      num_steps=3000,
      lr=5e-4,
      min_lr=0.0,
      warmup_steps=100,
      b1=0.9,
      b2=0.95,
      weight_decay=1e-4,
      grad_clip=1.0,
      grad_skip=False,  # clip only: the official skip drops every step here (norms 10-25)
      noise_std=0.0,
      dequantize=True)
  c.sample.update(guidance=1.0, denoise="none")
  c.checkpoint.update(every_steps=1000)
  if smoke:
    c.train.update(num_steps=10, warmup_steps=2, batch_size=8)
    c.log.update(every_steps=1, progress=False)
  return c
