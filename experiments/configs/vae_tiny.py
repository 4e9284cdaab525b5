"""Small causal 3D VAE (4x temporal, 8x spatial) on the procedural shapes, then a latent-space flow.

  python -m experiments.train_vae --config=experiments/configs/vae_tiny.py --workdir=/tmp/vae_tiny

9-frame 32x32 clips -> latents of 3 frames x 4x4 x 8 channels. About 30 minutes on a 2-core CPU
(~2 s/step: XLA's CPU 3D convolutions dominate);
prints the reconstruction PSNR of held-out clips and writes WORKDIR/autoencoder. The latent-space
flow of the same data is `experiments/configs/tiny_video.py:latent`.
"""

import ml_collections

from experiments.configs import base


def get_config(arg: str = ""):
  c = base.base_config()
  c.data.shapes.update(num_frames=9,
                       height=32,
                       width=32,
                       max_objects=1,
                       min_radius=0.15,
                       max_radius=0.22,
                       colors=("red", "green", "blue", "yellow"))
  c.vae = ml_collections.ConfigDict(
      dict(latent_channels=8, channels=(16, 32, 64), temporal_downsamples=2, kl_weight=1e-4))
  c.train.update(batch_size=8, num_steps=800, lr=1e-3, min_lr=1e-4, warmup_steps=50)
  c.log.update(every_steps=50)
  c.eval_clips = 64
  if arg == "smoke":
    c.train.update(num_steps=6, warmup_steps=1, batch_size=2)
    c.eval_clips = 4
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; use '' or 'smoke'")
  return c
