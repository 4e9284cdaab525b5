r"""WAN VAE speed: our chunked Flax encoder / decoder against diffusers' AutoencoderKLWan.

  python -m experiments.bench_wan_vae --arch=wan2.2 --frames=9 --size=64
  python -m experiments.bench_wan_vae --arch=tiny --frames=17 --size=64

Builds the architecture with random weights (no download): from diffusers when it is installed
(the optional extra `[wan-parity]`), in which case the same weights are timed in both and the
outputs compared, else from our own initialiser. Prints compile time, wall time per pixel frame
for encoding and decoding (after compilation, best of --repeats), and the diffusers/ours ratio.
Figures belong in BENCHMARKS.md with the machine.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from starflow_jax.autoencoder import wan_vae

FLAGS = flags.FLAGS

ARCHS = {  # diffusers AutoencoderKLWan kwargs
    "tiny":
        dict(base_dim=8,
             decoder_base_dim=12,
             z_dim=6,
             dim_mult=[1, 2, 2, 2],
             num_res_blocks=1,
             temperal_downsample=[False, True, True],
             is_residual=True,
             in_channels=12,
             out_channels=12,
             patch_size=2,
             scale_factor_spatial=16),
    "wan2.1":
        dict(base_dim=96, z_dim=16),  # Wan-AI/Wan2.1-*-Diffusers vae/config.json
    "wan2.2":
        dict(base_dim=160,
             decoder_base_dim=256,
             z_dim=48,
             dim_mult=[1, 2, 4, 4],
             num_res_blocks=2,
             temperal_downsample=[False, True, True],
             is_residual=True,
             in_channels=12,
             out_channels=12,
             patch_size=2,
             scale_factor_spatial=16,
             latents_mean=[0.0] * 48,
             latents_std=[1.0] * 48),  # Wan2.2-TI2V-5B vae/
}


def define_flags():
  flags.DEFINE_enum("arch", "tiny", list(ARCHS), "architecture (random weights)")
  flags.DEFINE_integer("frames", 9, "pixel frames (1 + 4k)")
  flags.DEFINE_integer("size", 64, "height and width in pixels")
  flags.DEFINE_integer("encode_chunk", 1, "latent frames per encoder call (ours)")
  flags.DEFINE_integer("decode_chunk", 1, "latent frames per decoder call (ours)")
  flags.DEFINE_integer("repeats", 2, "timed runs after compilation (best is reported)")
  flags.DEFINE_bool("reference", True, "also time diffusers when it is installed")


def _best(fn, repeats):
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - start)
  return min(times), out


def main(argv):
  del argv
  kwargs = ARCHS[FLAGS.arch]
  reference = None
  if FLAGS.reference:
    try:
      import diffusers
      import torch
      torch.manual_seed(0)
      reference = diffusers.AutoencoderKLWan(**kwargs).eval()
    except ImportError:
      print("diffusers / torch not installed: timing ours only (pip install -e .[wan-parity])")
  config = wan_vae.WanVAEConfig.from_diffusers(kwargs)
  if reference is not None:
    state_dict = {k: v.detach().numpy() for k, v in reference.state_dict().items()}
    params = wan_vae.params_from_state_dict(config, state_dict)
  else:
    params = jax.jit(lambda k: wan_vae.WanVAE(config).init(
        k, jnp.zeros((1, 5, config.spatial_factor, config.spatial_factor, 3)))["params"])(jax.random.PRNGKey(0))
  n_params = sum(np.size(x) for x in jax.tree_util.tree_leaves(params))
  video = np.random.default_rng(0).uniform(-1, 1, (1, FLAGS.frames, FLAGS.size, FLAGS.size, 3)).astype(np.float32)
  runner = wan_vae.WanVAERunner(config, params, encode_chunk=FLAGS.encode_chunk, decode_chunk=FLAGS.decode_chunk)
  print(f"{FLAGS.arch}: {n_params / 1e6:.1f}M parameters; video {video.shape[1:]}; jax {jax.__version__} on "
        f"{jax.devices()[0].platform}")

  start = time.perf_counter()
  z = jax.block_until_ready(runner.encode(video))
  x = jax.block_until_ready(runner.decode(z))
  print(f"ours: first encode + decode (compile + run) {time.perf_counter() - start:.1f} s")
  enc, z = _best(lambda: jax.block_until_ready(runner.encode(video)), FLAGS.repeats)
  dec, x = _best(lambda: jax.block_until_ready(runner.decode(z)), FLAGS.repeats)
  t = FLAGS.frames
  print(f"ours: encode {enc:.2f} s ({1e3 * enc / t:.0f} ms/frame), decode {dec:.2f} s ({1e3 * dec / t:.0f} ms/frame)")
  if reference is None:
    return
  import torch
  with torch.no_grad():
    pixels = torch.from_numpy(video).permute(0, 4, 1, 2, 3)
    ref_enc, moments = _best(lambda: reference._encode(pixels), FLAGS.repeats)
    latents = moments[:, :config.z_dim]
    ref_dec, decoded = _best(lambda: reference.decode(latents).sample, FLAGS.repeats)
  moments = moments.permute(0, 2, 3, 4, 1).numpy()
  decoded = decoded.permute(0, 2, 3, 4, 1).numpy()
  print(f"diffusers (torch {torch.__version__}, {torch.get_num_threads()} threads): encode {ref_enc:.2f} s "
        f"({1e3 * ref_enc / t:.0f} ms/frame), decode {ref_dec:.2f} s ({1e3 * ref_dec / t:.0f} ms/frame)")
  print(f"speed-up (diffusers / ours): encode {ref_enc / enc:.2f}x, decode {ref_dec / dec:.2f}x")
  ours_moments = np.asarray(runner.moments(video))
  ours_pixels = np.asarray(runner.decode(jnp.asarray(moments[..., :config.z_dim])))
  print(f"max |ours - diffusers|: moments {np.abs(ours_moments - moments).max():.2e}, "
        f"pixels {np.abs(ours_pixels - decoded).max():.2e}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
