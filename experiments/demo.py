"""`make demo`: train the tiny text-to-video model on CPU, then sample captioned clips.

  python -m experiments.demo --out_dir=demo_output

1. Trains experiments/configs/tiny_video.py on the procedural moving-shapes dataset in
   OUT_DIR/workdir (about 6 minutes on a 2-core CPU; rerunning resumes or reuses the result).
2. Samples a few captioned clips with the model's decoding method (sequential for this one),
   classifier-free guidance and the flow-score-matching denoiser, plus a clip 3x longer than
   training (sliding window), and writes MP4, GIF and a PNG grid for each into OUT_DIR/samples.
3. Prints the prompt adherence (colour and direction accuracy, experiments.eval_samples).
"""

import os
import time

from absl import app, flags
import jax
import numpy as np

from experiments import eval_samples
from experiments.cli import setup_logging
from experiments.configs import tiny_video
from starflow_jax import checkpoint, fileio, media, metrics, train_loop
from starflow_jax.sampling import VideoSampler, options_from_defaults

FLAGS = flags.FLAGS


def define_flags():
  """Registers the flags of this command; called only when it runs as a program, so that
  every module can be imported into one process (tests) without clashing flag names."""
  flags.DEFINE_string("out_dir", "demo_output", "where the training workdir and the samples go")
  flags.DEFINE_string("config_arg", "", "argument of tiny_video.get_config ('' or 'micro' for a fast check)")


PROMPTS = (  # the tiny_video vocabulary: red/green/blue/yellow, square/circle/triangle, 4 directions
    "a red circle moving left",
    "a blue square moving down",
    "a green triangle moving right",
    "a yellow square moving up",
    "a blue circle moving right",
    "a red triangle moving down",
)


def main(argv):
  del argv
  setup_logging()
  start = time.time()
  config = tiny_video.get_config(FLAGS.config_arg)
  workdir = os.path.join(FLAGS.out_dir, "workdir")
  model_dir = os.path.join(workdir, "model")
  if checkpoint.is_model_directory(model_dir) and metrics.read_metrics(workdir) and \
      metrics.read_metrics(workdir)[-1]["step"] >= config.train.num_steps:
    print(f"reusing the trained model in {model_dir} (delete {workdir} to train again)")
  else:
    print(f"training tiny_video for {config.train.num_steps} steps in {workdir} ...")
    train_loop.train_and_evaluate(config, workdir)
  train_seconds = time.time() - start
  records = metrics.read_metrics(workdir)
  final = records[-1] if records else {}

  bundle = checkpoint.load_bundle(model_dir)
  defaults = bundle.sampling_defaults
  frames = defaults["num_frames"]
  options = options_from_defaults(defaults, progress=False)
  sampler = VideoSampler(bundle, options)
  sample_dir = os.path.join(FLAGS.out_dir, "samples")
  sample_start = time.time()
  videos = np.asarray(jax.device_get(sampler.generate(list(PROMPTS), frames, seed=0)))
  written = []
  for prompt, video in zip(PROMPTS, videos):
    stem = os.path.join(sample_dir, prompt.replace(" ", "_"))
    written.append(media.save_gif(stem + ".gif", video, fps=4))
    mp4 = media.save_mp4(stem + ".mp4", video, fps=4)
    if mp4:
      written.append(mp4)
  written.append(media.save_grid_png(os.path.join(sample_dir, "samples.png"), videos, list(PROMPTS)))
  long_prompt = PROMPTS[0]
  long_video = np.asarray(jax.device_get(sampler.generate([long_prompt], 3 * frames, seed=1)))[0]
  written.append(
      media.save_gif(os.path.join(sample_dir, "long_" + long_prompt.replace(" ", "_") + ".gif"), long_video, fps=4))
  sample_seconds = time.time() - sample_start
  adherence = eval_samples.evaluate(workdir, sampler=sampler)  # every vocabulary prompt, scored

  print("\n=== starflow-jax demo ===")
  print(f"trained {final.get('step', '?')} steps in {train_seconds / 60:.1f} min; final loss "
        f"{final.get('loss', float('nan')):.3f}, bpd {final.get('bpd', float('nan')):.3f} (of the "
        f"noise-augmented pixels, sigma {defaults['noise_std']})")
  print(f"sampled {len(PROMPTS)} clips of {frames} frames and one of {3 * frames} frames in "
        f"{sample_seconds:.0f}s ({defaults['method']} decoding, guidance {defaults['guidance']}, learned denoiser)")
  samples = adherence["samples"]
  print(f"prompt adherence over {samples['clips']} sampled clips of every vocabulary prompt: colour "
        f"{samples['colour_accuracy']:.2f}, direction {samples['direction_accuracy']:.2f} (chance "
        f"{samples['colour_chance']:.2f} / {samples['direction_chance']:.2f}; python -m experiments.eval_samples)")
  print(f"training workdir: {workdir} (TensorBoard: {os.path.join(workdir, 'tensorboard')})")
  print(f"loss curve:       {os.path.join(workdir, 'loss_curve.png')}")
  print(f"model directory:  {model_dir}")
  for path in written:
    print(f"sample:           {path}")
  print("sample more: python -m experiments.sample --workdir=" + workdir +
        " --prompt='a blue circle moving up' --out=my_clip.mp4")
  summary = {"train_minutes": train_seconds / 60, "final": final, "samples": written, "adherence": adherence}
  fileio.write_json(os.path.join(FLAGS.out_dir, "summary.json"), summary, overwrite=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
