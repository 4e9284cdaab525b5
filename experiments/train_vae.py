"""Train the small causal 3D VAE and report its reconstruction PSNR on held-out clips.

  python -m experiments.train_vae --config=experiments/configs/vae_tiny.py --workdir=/tmp/vae_tiny

Writes WORKDIR/autoencoder (use it with --config.autoencoder.kind=causal_vae
--config.autoencoder.checkpoint=WORKDIR/autoencoder) and WORKDIR/vae_report.json.
"""

import os
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np
import optax
import tqdm

from data_pipeline import pipeline, sources
from experiments.cli import setup_logging
from starflow_jax import fileio, image_metrics
from starflow_jax.autoencoder import causal_vae, vae_checkpoint
from starflow_jax.errors import UserError
from data_pipeline.pixels import pixels_to_unit

FLAGS = flags.FLAGS


def define_flags():
  """Registers the flags of this command; called only when it runs as a program, so that
  every module can be imported into one process (tests) without clashing flag names."""
  config_flags.DEFINE_config_file("config", None, "VAE config (experiments/configs/vae_tiny.py)", lock_config=True)
  flags.DEFINE_string("workdir", None, "output directory")


def evaluate(module, params, config, clips: int) -> dict:
  source = sources.build_source(config.data, "eval")
  video = np.stack([source[i]["video"] for i in range(min(clips, len(source)))])
  x = pixels_to_unit(jnp.asarray(video), None)
  recon = jax.jit(lambda p, x: module.apply(
      {"params": p}, module.apply({"params": p}, x, method=module.encode), method=module.decode))(params, x)
  recon = jnp.clip(recon, -1.0, 1.0)
  return {
      "psnr_db": float(jnp.mean(image_metrics.psnr(recon, x))),
      "ssim": float(jnp.mean(image_metrics.ssim(recon, x))),
      "clips": int(len(video))
  }


def train_vae(config: ml_collections.ConfigDict, workdir: str) -> dict:
  out_dir = os.path.join(workdir, "autoencoder")
  if os.path.exists(out_dir):
    raise FileExistsError(f"{out_dir} already holds an autoencoder; choose a new --workdir or remove it "
                          "by hand (a trained VAE is never replaced)")
  if not 0 <= config.train.warmup_steps < config.train.num_steps:
    raise UserError(f"train.warmup_steps ({config.train.warmup_steps}) must be below train.num_steps "
                    f"({config.train.num_steps}); lower --config.train.warmup_steps")
  vae_config = causal_vae.CausalVAEConfig(in_channels=3, **config.vae.to_dict())
  frames = config.data.shapes.num_frames
  causal_vae.check_frames(frames, vae_config.temporal_factor)
  module = causal_vae.CausalVAE(vae_config)
  source = sources.build_source(config.data, "train")
  options = pipeline.PipelineOptions(batch_size=config.train.batch_size, seed=config.seed)
  iterator = iter(pipeline.build_dataset(source, options, sources.element_transforms(config.data)))
  sample = pixels_to_unit(jnp.asarray(next(iterator)["video"]), None)
  params = jax.jit(module.init)(jax.random.PRNGKey(config.seed), sample, jax.random.PRNGKey(1))["params"]
  schedule = optax.warmup_cosine_decay_schedule(1e-6, config.train.lr, config.train.warmup_steps,
                                                config.train.num_steps, config.train.min_lr)
  optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=1e-4))
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, opt_state, video, rng):
    x = pixels_to_unit(video, None)
    (_, metrics), grads = jax.value_and_grad(lambda p: causal_vae.vae_loss(module, p, x, rng), has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, metrics

  start = time.time()
  bar = tqdm.tqdm(range(config.train.num_steps), desc="vae", disable=not config.log.progress)
  for i in bar:
    params, opt_state, metrics = step(params, opt_state, jnp.asarray(next(iterator)["video"]),
                                      jax.random.fold_in(jax.random.PRNGKey(config.seed + 1), i))
    if (i + 1) % config.log.every_steps == 0:
      bar.set_postfix({k: f"{float(v):.4f}" for k, v in metrics.items()}, refresh=False)
  report = evaluate(module, params, config, config.eval_clips)
  report.update(train_minutes=(time.time() - start) / 60,
                steps=config.train.num_steps,
                latent_shape=list(module.apply({
                    "params": params
                }, sample[:1], method=module.encode).shape[1:]))
  vae_checkpoint.save(out_dir, vae_config, params, report)
  fileio.write_json(os.path.join(workdir, "vae_report.json"), report, overwrite=True)
  return report


def main(argv):
  del argv
  setup_logging()
  os.makedirs(FLAGS.workdir, exist_ok=True)
  report = train_vae(FLAGS.config, FLAGS.workdir)
  print(f"held-out reconstruction: PSNR {report['psnr_db']:.2f} dB, SSIM {report['ssim']:.4f} over "
        f"{report['clips']} clips; latents {report['latent_shape']}; {report['train_minutes']:.1f} min")
  print(f"autoencoder written to {os.path.join(FLAGS.workdir, 'autoencoder')}")


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
