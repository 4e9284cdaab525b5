"""The paper's denoising ablation on our data (ALGORITHM.md section 7), for a trained model.

  python -m experiments.eval_denoiser --workdir=/tmp/tiny_video [--num_clips=64] [--out=ablation.png]

Held-out clips of the training data source get sigma noise (the training sigma); the table
reports PSNR and SSIM against the clean clip, and the flow's NLL (bits per dim), for
  clean | noisy input | score-based (x + sigma^2 grad log p, the flow's own gradient) |
  flow-score matching (the learned denoiser, step sigma = Tweedie) | same with the official step 0.3,
then, on the model's own samples, the high-frequency energy before and after each denoiser.
A side-by-side PNG (rows: clean, noisy, score-based, learned) is saved.
"""

import json
import os

from absl import app, flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from data_pipeline import sources
from experiments.cli import setup_logging
from starflow_jax import checkpoint, fileio, image_metrics, losses, media
from starflow_jax.model import StarFlow
from starflow_jax.sampling import OFFICIAL_DENOISE_STEP, SamplingOptions, VideoSampler
from data_pipeline.pixels import pixels_to_unit

FLAGS = flags.FLAGS


def define_flags():
  """Registers the flags of this command; called only when it runs as a program, so that
  every module can be imported into one process (tests) without clashing flag names."""
  flags.DEFINE_string("workdir", None, "training workdir (with config.json and model/)")
  flags.DEFINE_integer("num_clips", 64, "held-out clips")
  flags.DEFINE_integer("num_samples", 16, "generated clips for the sample statistic")
  flags.DEFINE_integer("seed", 0, "noise seed")
  flags.DEFINE_string("out", None, "side-by-side PNG (default WORKDIR/denoiser_ablation.png)")


def held_out_clips(config: ml_collections.ConfigDict, count: int) -> np.ndarray:
  source = sources.build_source(config.data, "eval")
  videos = [np.asarray(source[i]["video"]) for i in range(min(count, len(source)))]
  return np.asarray(jax.device_get(pixels_to_unit(jnp.asarray(np.stack(videos)), None)))


def evaluate(workdir: str, num_clips: int = 64, num_samples: int = 16, seed: int = 0) -> dict:
  with open(os.path.join(workdir, "config.json")) as f:
    config = ml_collections.ConfigDict(json.load(f))
  bundle = checkpoint.load_bundle(os.path.join(workdir, "model"))
  sigma, guidance = float(config.train.noise_std), float(config.sample.guidance)
  sampler = VideoSampler(bundle, SamplingOptions(method="jacobi", guidance=guidance, noise_std=sigma, progress=False))
  clean = jnp.asarray(held_out_clips(config, num_clips))
  if not bundle.config.is_video:
    clean = clean[:, 0]
  captions = [str(sources.build_source(config.data, "eval")[i].get("caption", "")) for i in range(len(clean))]
  cond, _ = sampler.encode_prompts(captions) if bundle.config.conditioning == "text" else (None, None)
  noisy = clean + sigma * jax.random.normal(jax.random.PRNGKey(seed), clean.shape)
  variants = denoised_variants(sampler, clean, noisy, cond, sigma)
  # How well the denoiser fits its training target sigma * dNLL/dx~ on held-out clips (R^2):
  # a perfect fit makes "flow-score matching (step sigma)" equal the score-based row.
  target = (noisy - variants["score-based (flow gradient)"]) / sigma  # sigma * grad NLL
  pred = sampler._denoiser(bundle.params, noisy, cond)
  fit_r2 = float(1.0 - jnp.sum(jnp.square(pred - target)) / jnp.sum(jnp.square(target - jnp.mean(target))))
  nll_bpd = bits_per_dim_fn(bundle)
  rows = {}
  for name, x in variants.items():
    rows[name] = {
        "psnr": float(jnp.mean(image_metrics.psnr(x, clean))),
        "ssim": float(jnp.mean(image_metrics.ssim(x, clean))),
        "bpd": float(jnp.mean(nll_bpd(x, cond))),
    }
  frames = sources.example_shape(config.data)[0]
  hfe = sample_sharpness(bundle, sampler, captions[:num_samples], frames, guidance, sigma, seed + 1)
  hfe["clean data (reference)"] = float(jnp.mean(image_metrics.high_frequency_energy(clean)))
  return {
      "sigma": sigma,
      "clips": int(len(clean)),
      "rows": rows,
      "high_frequency_energy": hfe,
      "denoiser_fit_r2": fit_r2,
      "pictures": {
          k: np.asarray(v[:4]) for k, v in variants.items()
      },
  }


def bits_per_dim_fn(bundle: checkpoint.ModelBundle):
  """x, cond -> each example's exact bits per dimension under the model (compiled)."""
  model = StarFlow(bundle.config)

  @jax.jit
  def nll_bpd(x, cond):
    out = model.apply({"params": bundle.params}, x, cond)
    return losses.bits_per_dim(losses.nll_per_dim(out.z, out.logdets))

  return nll_bpd


def denoised_variants(sampler: VideoSampler, clean, noisy, cond, sigma: float) -> dict:
  """The held-out clips clean, noisy, and denoised by each rule."""
  params = sampler.params
  return {
      "clean":
          clean,
      "noisy input":
          noisy,
      "score-based (flow gradient)":
          sampler._score_step(params, noisy, cond, sigma),
      "flow-score matching (step sigma)":
          noisy - sigma * sampler._denoiser(params, noisy, cond),
      f"flow-score matching (step {OFFICIAL_DENOISE_STEP})":
          noisy - OFFICIAL_DENOISE_STEP * sampler._denoiser(params, noisy, cond),
  }


def sample_sharpness(bundle, sampler: VideoSampler, prompts, frames: int, guidance: float, sigma: float,
                     seed: int) -> dict:
  """High-frequency energy of generated samples before and after each denoising rule."""
  raw_sampler = VideoSampler(
      bundle, SamplingOptions(method="jacobi", guidance=guidance, noise_std=sigma, denoise="none", progress=False))
  raw = raw_sampler.generate(prompts, frames, seed=seed)
  cond = raw_sampler.encode_prompts(prompts)[0] if bundle.config.conditioning == "text" else None
  params = bundle.params
  rows = {
      "samples, no denoiser": raw,
      "samples, score-based": sampler._score_step(params, raw, cond, sigma),
      "samples, flow-score matching": raw - sigma * sampler._denoiser(params, raw, cond),
  }
  return {name: float(jnp.mean(image_metrics.high_frequency_energy(x))) for name, x in rows.items()}


def main(argv):
  del argv
  setup_logging()
  result = evaluate(FLAGS.workdir, FLAGS.num_clips, FLAGS.num_samples, FLAGS.seed)
  print(f"\ndenoising ablation: {result['clips']} held-out clips, sigma {result['sigma']}")
  print(f"{'':38s} {'PSNR dB':>8s} {'SSIM':>7s} {'bpd':>7s}")
  for name, r in result["rows"].items():
    print(f"{name:38s} {r['psnr']:8.2f} {r['ssim']:7.4f} {r['bpd']:7.3f}")
  print(f"\nlearned denoiser vs its target sigma*dNLL/dx on these clips: R^2 = {result['denoiser_fit_r2']:.3f}")
  print("\nhigh-frequency energy (mean |Laplacian|):")
  for name, v in result["high_frequency_energy"].items():
    print(f"  {name:36s} {v:.4f}")
  pictures = result["pictures"]
  names = ["clean", "noisy input", "score-based (flow gradient)", "flow-score matching (step sigma)"]
  as_video = lambda v: v[:, None] if v.ndim == 4 else v  # images -> 1-frame clips
  grid = np.stack([as_video(pictures[n])[i] for i in range(len(pictures["clean"])) for n in names])
  labels = [n for _ in range(len(pictures["clean"])) for n in names]
  out = FLAGS.out or os.path.join(FLAGS.workdir, "denoiser_ablation.png")
  print("\nwrote", media.save_grid_png(out, grid, labels))
  fileio.write_json(os.path.splitext(out)[0] + ".json", {
      k: v for k, v in result.items() if k != "pictures"
  },
                    overwrite=True)


if __name__ == "__main__":
  define_flags()
  flags.mark_flag_as_required("workdir")
  app.run(main)
