"""`make demo`: imports the official golden video model and samples it to GIF/MP4/PNG.

(Until the trainer lands this samples the tiny imported official model; the latents are 4x4
with 4 channels, shown as RGB from the first three channels.)
"""

import os
import time

from absl import app, flags
import jax
import numpy as np

from starflow_jax import checkpoint, decoding, jacobi, media
from starflow_jax.interop import convert

FLAGS = flags.FLAGS
flags.DEFINE_string("out_dir", "demo_output", "where to write the model and the samples")

GOLDEN = os.path.join(os.path.dirname(__file__), os.pardir, "tests", "golden", "video")


def main(_):
  os.makedirs(FLAGS.out_dir, exist_ok=True)
  model_dir = os.path.join(FLAGS.out_dir, "golden_video_model")
  if not os.path.exists(model_dir):
    convert.official_to_jax(os.path.join(GOLDEN, "weights.safetensors"),
                            os.path.join(GOLDEN, "config.json"), model_dir)
  config, params = checkpoint.load_model(model_dir)
  vectors = np.load(os.path.join(GOLDEN, "vectors.npz"))
  cond = vectors["y"]
  z = jax.random.normal(jax.random.PRNGKey(0), (2, 8, config.img_size, config.img_size, config.in_channels))
  start = time.time()
  seq = decoding.sample_sequential(config, params, z, cond, guidance=2.0)
  fast = jacobi.sample_jacobi(config, params, z, cond, guidance=2.0, block_size=4, threshold=1e-3)
  print(f"sampled 2 clips of 8 frames twice in {time.time() - start:.2f}s "
        f"(sequential vs Jacobi max diff {float(np.abs(seq - fast).max()):.2e})")
  videos = np.tanh(np.asarray(seq)[..., :3] / 3.0)
  for i, video in enumerate(videos):
    print("wrote", media.save_gif(os.path.join(FLAGS.out_dir, f"sample_{i}.gif"), video))
    path = media.save_mp4(os.path.join(FLAGS.out_dir, f"sample_{i}.mp4"), video)
    if path:
      print("wrote", path)
  print("wrote", media.save_grid_png(os.path.join(FLAGS.out_dir, "samples.png"), videos))


if __name__ == "__main__":
  app.run(main)
