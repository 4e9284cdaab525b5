"""Exact per-frame likelihood of clips under a trained model.

  python -m experiments.score --workdir=MODEL --input=clip.gif [--prompt="a red circle moving left"] \
      --out=report.json [--noise_samples=4] [--seed=0]

--input is a clip (gif / mp4 / npy), an image, or a directory of them. Each clip is resized as
the sampler's conditioning input (`experiments.sample.load_frames`), encoded by the model's
autoencoder, noised as in training (x~ = x + sigma * eps, averaged over --noise_samples draws)
and run forward once: frame t's NLL is -log p(x~_t | x~_<t), the deep block's causal
factorisation (`losses.frame_nll`); the frames' NLLs sum to the clip's. The report has per
frame nats, nats per dimension and (pixel-space models, 8-bit data) bits per dimension, and the
clip's totals; beside it, one PNG per clip: its frames, each frame's per-token NLL as a heatmap
(`model.token_nll`: where in the frame the surprise is) and the NLL over time. With --prompt the
clip is scored under that caption (the model's prompt template applied), else under the null
condition.

  python -m experiments.score --workdir=WORKDIR --dataset=eval [--num_examples=N] [--batch_size=B] \
      [--confidence=0.95] --out=report.json

--dataset scores a split of the data the model was trained on (the workdir's config.json: shapes,
digits, tfds, pre-encoded latents, ...) instead: batched and sharded over the config's mesh as
training is (`starflow_jax.evaluate`), every example under its own condition, as the training
objective sees it (dequantisation, x~ = x + sigma eps); the report has the mean nats per
dimension (and bits per dimension for 8-bit pixel models) with a confidence interval.
"""

from __future__ import annotations

from absl import app, flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import cli
from experiments.sample import CLIP_SUFFIXES, IMAGE_SUFFIXES, load_frames, model_directory
from starflow_jax import checkpoint, evaluate, fileio, losses, media, model as model_lib, sharding
from starflow_jax.errors import UserError
from starflow_jax.sampling import VideoSampler, options_from_defaults

FLAGS = flags.FLAGS


def define_flags():
  """Registers the flags of this command; called only when it runs as a program."""
  flags.DEFINE_string("workdir", None, "training workdir or model directory")
  flags.DEFINE_string("input", None, "clip (gif/mp4/npy), image, or a directory of them")
  flags.DEFINE_string("dataset", None, "score this split (train / eval) of the workdir's training data instead")
  flags.DEFINE_integer("num_examples", None, "--dataset: score the split's first N examples (default: all)")
  flags.DEFINE_integer("batch_size", None, "--dataset: global batch (default: the training batch)")
  flags.DEFINE_float("confidence", 0.95, "--dataset: level of the confidence interval")
  flags.DEFINE_string("prompt", None, "caption to score the clips under (default: the null condition)")
  flags.DEFINE_string("out", "report.json", "the JSON report")
  flags.DEFINE_integer("noise_samples", 1, "noise draws x~ = x + sigma eps averaged per clip")
  flags.DEFINE_integer("seed", 0, "seed of the noise draws")
  flags.DEFINE_string("t5", None, "local folder of the T5 the model directory names")
  flags.mark_flags_as_required(["workdir"])


def input_paths(path: str) -> list:
  """The clips to score: `path` itself, or the clips and images in the directory `path`."""
  path = fileio.as_path(path)
  if not path.exists():
    raise UserError(f"--input {path} does not exist")
  if not path.is_dir():
    return [path]
  found = sorted(p for p in path.iterdir() if p.suffix.lower() in CLIP_SUFFIXES + IMAGE_SUFFIXES)
  if not found:
    raise UserError(f"--input {path} holds no clips or images ({', '.join(CLIP_SUFFIXES + IMAGE_SUFFIXES)})")
  return found


class FrameScorer:
  """Per-frame exact NLL of pixel clips [1, T, H, W, C] in [-1, 1] under a model directory."""

  def __init__(self, bundle: checkpoint.ModelBundle, text_encoder=None):
    self.bundle = bundle
    self.sampler = VideoSampler(bundle,
                                options_from_defaults(bundle.sampling_defaults, progress=False),
                                text_encoder=text_encoder)
    self.sigma = self.sampler.options.noise_std
    model, video = model_lib.StarFlow(bundle.config), bundle.config.is_video

    def frame_nll(params, x, cond):  # x [B, T, H, W, C]; an image model's one frame as T = 1
      out = model.apply({"params": params}, x if video else x[:, 0], cond)
      return model_lib.token_nll(bundle.config, out, x.shape[1])  # [B, T, N]

    self._frame_nll = jax.jit(frame_nll)

  def condition(self, prompt: str | None, num_frames: int):
    """The condition to score under: the prompt's, or the model's null condition."""
    if self.bundle.config.conditioning is None:
      return None
    cond, null = self.sampler.encode_prompts([prompt or ""], num_frames)
    if prompt:
      return cond
    return model_lib.null_condition(self.bundle.config, cond, self.bundle.null_condition)

  def score(self, pixels: np.ndarray, prompt: str | None, noise_samples: int = 1, seed: int = 0) -> dict:
    if not self.bundle.config.is_video:
      pixels = pixels[:, :1]
    try:
      self.sampler.autoencoder.latent_frames(pixels.shape[1])
    except ValueError as e:
      raise UserError(f"the clip has {pixels.shape[1]} frames: {e}") from None
    latents = self.sampler.autoencoder.encode(jnp.asarray(pixels))  # [1, T', H', W', C']
    cond = self.condition(prompt, pixels.shape[1])
    draws = []
    for k in range(max(1, noise_samples)):
      noise = jax.random.normal(jax.random.PRNGKey(seed + k), latents.shape)
      x = latents + self.sigma * noise
      draws.append(self._frame_nll(self.sampler.params, x, cond))
    per_token = np.mean(np.stack([np.asarray(d)[0] for d in draws]), axis=0)  # [T', N]
    per_frame = per_token.sum(axis=-1)  # [T']
    dims = int(np.prod(latents.shape[2:]))
    pixel_space = self.bundle.autoencoder_config.kind == "identity"
    frames = []
    for t, nats in enumerate(per_frame):
      row = {"frame": t, "nll_nats": float(nats), "nats_per_dim": float(nats) / dims}
      if pixel_space:
        row["bits_per_dim"] = float(losses.bits_per_dim(jnp.asarray(nats / dims)))
      frames.append(row)
    total = float(np.sum(per_frame))
    grid = (latents.shape[2] // self.bundle.config.patch_size, latents.shape[3] // self.bundle.config.patch_size)
    clip = {
        "nll_nats": total,
        "nats_per_dim": total / (dims * len(per_frame)),
        "frames": frames,
        "token_nll": per_token.reshape((len(per_frame),) + grid).tolist()
    }
    if pixel_space:
      clip["bits_per_dim"] = float(losses.bits_per_dim(jnp.asarray(clip["nats_per_dim"])))
    return clip


def save_figure(path, pixels: np.ndarray, clip: dict) -> None:
  """One PNG: the clip's frames, their per-token NLL heatmaps (one colour scale), NLL over time."""
  import matplotlib  # heavy: only where figures are written
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  heat = np.asarray(clip["token_nll"])  # [T', h, w]
  shown = min(len(heat), 12)
  frames = pixels[np.linspace(0, len(pixels) - 1, shown).round().astype(int)] if len(pixels) > 1 else pixels
  fig = plt.figure(figsize=(1.6 * max(shown, 4), 5.2))
  grid = fig.add_gridspec(3, max(shown, 4), height_ratios=(1, 1, 1.1))
  for i in range(shown):
    fig.add_subplot(grid[0, i]).imshow(media.to_uint8(frames[min(i, len(frames) - 1)]))
    ax = fig.add_subplot(grid[1, i])
    ax.imshow(heat[i], cmap="magma", vmin=heat.min(), vmax=heat.max())
    for a in fig.axes[-2:]:
      a.set_xticks([]), a.set_yticks([])
    ax.set_title(f"t={i}", fontsize=7)
  curve = fig.add_subplot(grid[2, :])
  curve.plot([f["nats_per_dim"] for f in clip["frames"]], marker="o", lw=1)
  curve.set_xticks(range(len(clip["frames"])))
  curve.set_xlabel("frame" if "bits_per_dim" in clip else "latent frame")  # bits/dim: pixel space
  curve.set_ylabel("NLL (nats / dim)")
  curve.grid(alpha=0.3)
  fig.tight_layout()
  fileio.write_file(path, lambda local: fig.savefig(local, dpi=100, format="png"), suffix=".png")
  plt.close(fig)


def score_dataset(workdir: str, split: str) -> dict:
  """--dataset: the split's NLL with its interval (`evaluate.dataset_nll`), printed and returned."""
  path = fileio.as_path(workdir) / "config.json"
  if not path.exists():
    raise UserError(f"--dataset needs the training workdir (with config.json), not {workdir}")
  if split not in ("train", "eval"):
    raise UserError(f"--dataset={split} must be train or eval")
  if FLAGS.num_examples is not None and FLAGS.num_examples < 1:
    raise UserError(f"--num_examples={FLAGS.num_examples} must be >= 1")
  if FLAGS.batch_size is not None and FLAGS.batch_size < 1:
    raise UserError(f"--batch_size={FLAGS.batch_size} must be >= 1 (or left out: the training batch)")
  config = ml_collections.ConfigDict(fileio.read_json(path))
  bundle = checkpoint.load_bundle(model_directory(workdir))
  mesh = sharding.make_mesh(config.mesh.shape)
  result = evaluate.dataset_nll(config,
                                mesh,
                                bundle.params,
                                bundle.text_params,
                                split=split,
                                num_examples=FLAGS.num_examples,
                                batch_size=FLAGS.batch_size,
                                seed=FLAGS.seed,
                                confidence=FLAGS.confidence).as_dict()
  low, high = result["nats_per_dim_interval"]
  line = f"{split}: {result['nats_per_dim']:.4f} nats/dim ({FLAGS.confidence:.0%} CI {low:.4f}-{high:.4f})"
  if "bits_per_dim" in result:
    low, high = result["bits_per_dim_interval"]
    line += f", {result['bits_per_dim']:.4f} bits/dim ({low:.4f}-{high:.4f})"
  print(f"{line} over {result['num_examples']} examples (noise_std {result['noise_std']})")
  return {"model": str(workdir), **result}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cli.setup_logging()
  if FLAGS.noise_samples < 1:
    raise UserError(f"--noise_samples={FLAGS.noise_samples} must be >= 1")
  if (FLAGS.input is None) == (FLAGS.dataset is None):
    raise UserError("give one of --input (clips to score) or --dataset (a split of the training data)")
  if FLAGS.dataset is not None:
    fileio.write_json(FLAGS.out, score_dataset(FLAGS.workdir, FLAGS.dataset), overwrite=True)
    print(f"wrote {FLAGS.out}")
    return
  paths = input_paths(FLAGS.input)
  bundle = checkpoint.load_bundle(model_directory(FLAGS.workdir))
  text_encoder = bundle.t5.build(FLAGS.t5) if bundle.t5 is not None else None
  scorer = FrameScorer(bundle, text_encoder)
  clips = {}
  for path in paths:
    pixels = load_frames(str(path), scorer.sampler.pixel_size, None)[None]
    clip = clips[str(path)] = scorer.score(pixels, FLAGS.prompt, FLAGS.noise_samples, FLAGS.seed)
    clip["figure"] = f"{str(FLAGS.out).rsplit('.', 1)[0]}_{len(clips) - 1}.png"
    save_figure(clip["figure"], pixels[0], clip)
    line = ", ".join(f"{f['nats_per_dim']:.3f}" for f in clip["frames"])
    bits = f" ({clip['bits_per_dim']:.4f} bits/dim)" if "bits_per_dim" in clip else ""
    print(f"{path}: {clip['nats_per_dim']:.4f} nats/dim{bits}; per frame: {line}")
  report = {
      "model": str(FLAGS.workdir),
      "prompt": FLAGS.prompt,
      "noise_std": scorer.sigma,
      "noise_samples": FLAGS.noise_samples,
      "clips": clips
  }
  fileio.write_json(FLAGS.out, report, overwrite=True)
  print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
