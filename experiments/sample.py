"""Sample a trained model to MP4 / GIF / PNG grid.

  python -m experiments.sample --workdir=/tmp/tiny_video --prompt="a red circle moving left" \
      --num_frames=6 --method=jacobi --guidance=2 --seed=0 --out=video.mp4

  # image-to-video / continuation / video-to-video from the same weights
  python -m experiments.sample --workdir=... --mode=i2v --input=frame.png --prompt=... --out=i2v.mp4
  python -m experiments.sample --workdir=... --mode=continue --input=clip.gif --num_frames=12 ...
  python -m experiments.sample --workdir=... --mode=v2v --input=clip.gif --prompt=... ...
  # longer than training: the deep block slides its window (default: the training length)
  python -m experiments.sample --workdir=... --num_frames=36 --prompt=... --out=long.mp4
  # streaming: each frame written to OUT_frames/ as soon as it is final, the prompt switched
  # at latent frame 12, the MP4 at the end (--num_frames=0: without end, until Ctrl-C)
  python -m experiments.sample --workdir=... --stream --num_frames=48 --prompt="a red circle moving left" \
      --switch_prompt="12:a blue square moving up" --out=stream.mp4

--workdir is a training workdir (its exported `model/`) or a model directory (e.g. from
`starflow_jax.interop.convert official-to-jax`). Writes OUT (MP4; GIF if OUT ends in .gif),
the GIF and a PNG frame grid beside it; with several samples, OUT_0.mp4, OUT_1.mp4, ...
Paths may be `gs://...`. Multi-host (--multihost, the same command on every host): the samples
are split over all devices of all processes and process 0 writes the files.
"""

import logging
import time

from absl import app, flags
import jax.numpy as jnp
import imageio.v3 as iio
import numpy as np
from PIL import Image

from experiments import cli
from starflow_jax import checkpoint, distributed, fileio, media
from starflow_jax.errors import UserError
from starflow_jax.sampling import SamplingOptions, VideoSampler, options_from_defaults
from starflow_jax.text.t5 import T5TextEncoder

FLAGS = flags.FLAGS


def define_flags():
  """Registers the flags of this command; called only when it runs as a program, so that
  every module can be imported into one process (tests) without clashing flag names."""
  flags.DEFINE_string("workdir", None, "training workdir or model directory")
  flags.DEFINE_multi_string("prompt", [], "caption(s); repeat the flag for several samples")
  flags.DEFINE_integer("num_samples", 1, "samples per prompt")
  flags.DEFINE_integer("num_frames", None, "frames to generate (default: the training clip length)")
  flags.DEFINE_enum("method", None, ["auto", "jacobi", "sequential"],
                    "decoding of the flow inverse (auto: per flow block, Jacobi where it pays off)")
  flags.DEFINE_float("guidance", None, "classifier-free guidance weight (0: none)")
  flags.DEFINE_integer("seed", 0, "noise seed")
  flags.DEFINE_string("out", "video.mp4", "output path (.mp4 or .gif); a .png grid is written beside")
  flags.DEFINE_enum("mode", None, ["t2v", "i2v", "continue", "v2v"],
                    "what --input is used for (default: i2v with --input, as the official --input_image, else t2v)")
  flags.DEFINE_string("input", None, "image (png/jpg) or clip (gif/mp4/npy) for i2v / continue / v2v")
  flags.DEFINE_integer("input_frames", None, "frames of --input used as the prefix (default: all)")
  flags.DEFINE_integer("window", None, "latent frames the deep block attends to (default: training length)")
  flags.DEFINE_integer("context", None, "latent frames kept when the window slides (default window - 1)")
  flags.DEFINE_enum("denoise", "auto", ["auto", "learned", "score", "none"], "final denoising step")
  flags.DEFINE_float("denoise_step", None, "learned denoiser step (default sigma; official 0.3)")
  flags.DEFINE_float("noise_std", None, "training noise sigma (default: from the model directory)")
  flags.DEFINE_integer("jacobi_block_size", None, "Jacobi block size in the first frame (x4 after)")
  flags.DEFINE_float("jacobi_threshold", None, "Jacobi stop threshold tau")
  flags.DEFINE_integer("jacobi_max_iter", None, "Jacobi iterations per block at most")
  flags.DEFINE_integer(
      "jacobi_fallback", None, "finish a Jacobi block still changing after this many "
      "iterations token by token (exact; bounds the cost of slowly converging blocks)")
  flags.DEFINE_integer(
      "fps", None, "frames per second: of the written video and, for models conditioned on it, in "
      "the prompt (default: the model directory's, else 4)")
  flags.DEFINE_string(
      "aspect_ratio", None, "W:H of the samples (1:1, 16:9, 9:16, ...), for models trained on "
      "mixed aspect ratios (default: the model directory's)")
  flags.DEFINE_float("attn_temp", None, "softmax temperature of the flow's attention while inverting (official "
                     "--attn_temp; default 1)")
  flags.DEFINE_integer("guide_top", None, "guide the deep block only (official --guide_top: any value)")
  flags.DEFINE_bool(
      "return_sequence", False, "write every stage side by side (noise, deep block, each "
      "shallow block; no denoiser), as the official --return_sequence")
  flags.DEFINE_string("t5", None, "Hugging Face T5 / Flan-T5 directory, for models trained on its embeddings")
  flags.DEFINE_bool(
      "arrays", False, "also write the samples as float32 arrays [B, T, H, W, C] in "
      "[-1, 1] (OUT.npz, key 'videos'), for metrics without GIF/MP4 quantisation")
  flags.DEFINE_bool("multihost", False, "run on every host of a multi-host job (jax.distributed)")
  flags.DEFINE_bool(
      "stream", False, "write each frame to OUT_frames/ as soon as it is final and report the time "
      "to the first frame and frames/s (--num_frames=0: without end, until Ctrl-C)")
  flags.DEFINE_multi_string(
      "switch_prompt", [], "with --stream, FRAME:CAPTION: condition the latent frames from FRAME "
      "on on CAPTION (repeat the flag for several switches)")
  # The official sampler's names for the same settings.
  flags.DEFINE_alias("target_length", "num_frames")
  flags.DEFINE_alias("context_length", "context")
  flags.DEFINE_alias("cfg", "guidance")
  flags.DEFINE_alias("out_fps", "fps")
  flags.DEFINE_alias("input_image", "input")
  flags.DEFINE_alias("caption", "prompt")
  flags.DEFINE_alias("jacobi_th", "jacobi_threshold")
  flags.DEFINE_alias("target_noise_std", "noise_std")
  cli.define_launch_flags()
  flags.mark_flag_as_required("workdir")


log = logging.getLogger("starflow_jax.sample")


def model_directory(path: str):
  path = fileio.as_path(path)
  if not path.exists():
    raise UserError(f"--workdir {path} does not exist")
  if checkpoint.is_model_directory(path):
    return path
  if checkpoint.is_model_directory(path / "model"):
    return path / "model"
  raise UserError(f"{path} is neither a model directory nor a training workdir with an exported "
                  "model/ (training exports it at the end; or convert official weights with "
                  "python -m starflow_jax.interop.convert official-to-jax)")


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CLIP_SUFFIXES = (".gif", ".mp4", ".npy", ".webm", ".mov", ".avi")


def _read_frames(path) -> np.ndarray:
  """uint8 or float frames [T, H, W, C] of an image, a clip or a .npy file."""
  suffix = path.suffix.lower()
  if suffix not in IMAGE_SUFFIXES + CLIP_SUFFIXES:
    raise UserError(f"--input {path}: unknown file type {suffix!r}; give an image "
                    f"({', '.join(IMAGE_SUFFIXES)}) or a clip ({', '.join(CLIP_SUFFIXES)})")
  try:
    with path.open("rb") as f:
      if suffix == ".npy":
        frames = np.load(f)
        frames = media.to_uint8(frames) if frames.dtype != np.uint8 else frames
      elif suffix in IMAGE_SUFFIXES:
        frames = np.asarray(Image.open(f).convert("RGB"))[None]
      else:
        source = f.read() if fileio.is_url(path) else str(path)  # ffmpeg reads local files itself
        frames = np.asarray(iio.imread(source, index=None, extension=suffix))
  except Exception as e:  # noqa: BLE001 - the decoders raise many types; any means "not readable"
    raise UserError(f"--input {path} cannot be read as {suffix[1:]} ({type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else 'damaged file'}); give a valid file") from None
  return frames[None] if frames.ndim == 3 and suffix not in IMAGE_SUFFIXES else frames


def load_frames(path: str, size: tuple[int, int], max_frames: int | None) -> np.ndarray:
  """An image or clip as float32 [T, height, width, 3] in [-1, 1]: resized to cover (height,
  width), then center-cropped, as the official sampler prepares its input image."""
  path = fileio.as_path(path)
  if not path.is_file():
    raise UserError(f"--input {path} does not exist")
  frames = _read_frames(path)
  if frames.ndim != 4 or frames.shape[-1] not in (1, 3, 4):
    raise UserError(f"--input {path}: expected an image or a clip of RGB frames, got shape {frames.shape}")
  out = []
  for frame in frames[:max_frames]:
    image = Image.fromarray(frame[..., :3] if frame.shape[-1] != 1 else frame[..., 0]).convert("RGB")
    height, width = size
    scale = max(height / image.height, width / image.width)
    image = image.resize((max(width, int(image.width * scale)), max(height, int(image.height * scale))), Image.BILINEAR)
    left, top = (image.width - width) // 2, (image.height - height) // 2
    out.append(media.from_uint8(np.asarray(image.crop((left, top, left + width, top + height)))))
  return np.stack(out)


def sampling_options(bundle: checkpoint.ModelBundle) -> SamplingOptions:
  return options_from_defaults(bundle.sampling_defaults,
                               method=FLAGS.method,
                               guidance=FLAGS.guidance,
                               jacobi_block_size=FLAGS.jacobi_block_size,
                               jacobi_threshold=FLAGS.jacobi_threshold,
                               jacobi_max_iter=FLAGS.jacobi_max_iter,
                               jacobi_fallback=FLAGS.jacobi_fallback,
                               denoise=FLAGS.denoise,
                               denoise_step=FLAGS.denoise_step,
                               noise_std=FLAGS.noise_std,
                               window=FLAGS.window,
                               context=FLAGS.context,
                               fps=FLAGS.fps,
                               attn_temp=FLAGS.attn_temp,
                               guide_top=FLAGS.guide_top,
                               aspect_ratio=FLAGS.aspect_ratio)


OUT_SUFFIXES = (".mp4", ".gif")


def output_paths(out: str, index: int | None) -> tuple[str, str]:
  """(main file, GIF) of sample `index` (None: the only one)."""
  path = fileio.as_path(out)
  suffix = path.suffix.lower()
  if suffix not in OUT_SUFFIXES:
    raise UserError(f"--out {out} must end in .mp4 or .gif")
  stem = path.name[:-len(path.suffix)]
  root = path.parent / (stem if index is None else f"{stem}_{index}")
  return str(root) + suffix, str(root) + ".gif"


def check_flags() -> None:
  """The flag mistakes that can be seen before anything is loaded."""
  output_paths(FLAGS.out, None)
  if FLAGS.num_frames is not None and FLAGS.num_frames < (0 if FLAGS.stream else 1):
    raise UserError(f"--num_frames={FLAGS.num_frames} must be >= 1 (leave it out for the training "
                    "clip length; 0 with --stream: without end)")
  if FLAGS.stream and FLAGS.return_sequence:
    raise UserError("--stream writes the finished frames; --return_sequence needs the whole clip (use one)")
  if FLAGS.switch_prompt and not FLAGS.stream:
    raise UserError("--switch_prompt switches a stream's prompt: add --stream")
  prompt_switches()
  if FLAGS.num_samples < 1:
    raise UserError(f"--num_samples={FLAGS.num_samples} must be >= 1")
  if FLAGS.fps is not None and FLAGS.fps < 1:
    raise UserError(f"--fps={FLAGS.fps} must be >= 1")
  if FLAGS.mode not in (None, "t2v") and not FLAGS.input:
    raise UserError(f"--mode={FLAGS.mode} needs --input")
  if FLAGS.mode == "t2v" and FLAGS.input:
    raise UserError("--mode=t2v takes no --input; leave --mode out (or --mode=i2v) to start from the image")
  if FLAGS.input_frames is not None and FLAGS.input_frames < 1:
    raise UserError(f"--input_frames={FLAGS.input_frames} must be >= 1")


def prompt_switches() -> list[tuple[int, str]]:
  """--switch_prompt as [(latent frame, caption)] in frame order."""
  switches = []
  for value in FLAGS.switch_prompt:
    frame, sep, caption = value.partition(":")
    if not sep or not frame.strip().isdigit() or int(frame) < 1:
      raise UserError(f"--switch_prompt={value!r} must be FRAME:CAPTION with FRAME >= 1, e.g. '12:a blue square'")
    switches.append((int(frame), caption.strip()))
  return sorted(switches)


def stream_to_files(sampler: VideoSampler, prompts: list[str], num_frames: int | None, condition) -> None:
  """--stream: frames to OUT_frames/ (OUT_i_frames/ per sample) as they come, then the videos."""
  main_path = fileio.as_path(FLAGS.out)
  stem = main_path.parent / main_path.name[:-len(main_path.suffix)]
  batch = len(prompts) or FLAGS.num_samples
  folders = [fileio.as_path(f"{stem}_frames" if batch == 1 else f"{stem}_{i}_frames") for i in range(batch)]
  for folder in folders:
    if folder.exists() and any(folder.iterdir()):
      raise UserError(f"{folder} already holds frames; remove it or choose another --out")
  stream = sampler.stream(prompts or None,
                          num_frames or None,
                          FLAGS.seed,
                          batch_size=FLAGS.num_samples,
                          condition_video=condition)
  for at, caption in prompt_switches():
    stream.set_prompt([caption] * batch, frame=at)
  frames, start, first = [], time.time(), None
  try:
    for frame in stream:
      frame = np.asarray(distributed.gather_to_host(frame))
      first = first or time.time() - start
      if distributed.is_primary():
        for folder, image in zip(folders, frame):
          media.save_png(folder / f"frame_{len(frames):05d}.png", image)
      frames.append(frame)
  except KeyboardInterrupt:  # a stream without end stops here; what came is written
    log.info("stopped after %d frames", len(frames))
  total = time.time() - start
  rate = (len(frames) - 1) / max(total - first, 1e-9) if len(frames) > 1 else 0.0
  print(f"first frame after {first or 0:.2f}s; {len(frames)} frames in {total:.2f}s ({rate:.2f} frames/s after "
        "the first)")
  return np.stack(frames, axis=1) if frames else None


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cli.setup_logging()
  check_flags()
  mode = FLAGS.mode or ("i2v" if FLAGS.input else "t2v")
  cli.start_distributed(FLAGS.multihost)  # before any backend exists
  bundle = checkpoint.load_bundle(model_directory(FLAGS.workdir))
  options = sampling_options(bundle)
  num_frames = FLAGS.num_frames or bundle.sampling_defaults.get("num_frames", 1)
  prompts = list(FLAGS.prompt) * FLAGS.num_samples
  if bundle.config.conditioning is not None and not prompts:
    raise UserError("this model is conditioned: give --prompt (a caption, or a class id)")
  if mode == "v2v":
    prompts = [p if p.startswith("(v2v)") else "(v2v) " + p for p in prompts]
  text_encoder = None
  if bundle.t5 is not None:  # the encoder the model directory names (--t5: its folder here)
    text_encoder = bundle.t5.build(FLAGS.t5)
  elif FLAGS.t5:
    text_encoder = T5TextEncoder(FLAGS.t5, bundle.config.txt_size)
  sampler = VideoSampler(bundle, options, text_encoder=text_encoder)
  condition = None
  if mode != "t2v":
    max_frames = 1 if mode == "i2v" else FLAGS.input_frames
    condition = load_frames(FLAGS.input, sampler.pixel_size, max_frames)[None]
  start = time.time()
  if FLAGS.stream:
    videos = stream_to_files(sampler, prompts, FLAGS.num_frames if FLAGS.num_frames is not None else num_frames,
                             condition)
    if videos is None:
      return
  else:
    videos = sampler.generate(prompts or None,
                              num_frames,
                              FLAGS.seed,
                              condition_video=condition,
                              batch_size=FLAGS.num_samples,
                              return_sequence=FLAGS.return_sequence)
    if FLAGS.return_sequence:  # side by side along the width, as officially
      videos = jnp.concatenate(videos, axis=-2)
    videos = distributed.gather_to_host(videos)  # collective: every process gets all samples
  if videos.ndim == 4:
    videos = videos[:, None]
  log.info("generated %d clip(s) of %d frames in %.1fs (%s, guidance %.2g, denoise %s)", len(videos), videos.shape[1],
           time.time() - start, options.method, options.guidance, sampler.denoise_mode)
  if not distributed.is_primary():
    return
  written, fps = [], options.fps or 4
  for i, video in enumerate(videos):
    main_path, gif_path = output_paths(FLAGS.out, i if len(videos) > 1 else None)
    if main_path.endswith(".mp4"):
      if media.save_mp4(main_path, video, fps=fps):
        written.append(main_path)
    written.append(media.save_gif(gif_path, video, fps=fps))
  main_path = fileio.as_path(FLAGS.out)
  stem = main_path.parent / main_path.name[:-len(main_path.suffix)]
  written.append(media.save_grid_png(f"{stem}.png", videos, prompts or None))
  if FLAGS.arrays:
    written.append(str(fileio.write_file(f"{stem}.npz", lambda local: np.savez(local, videos=videos), suffix=".npz")))
  for path in written:
    print(f"wrote {path}")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
