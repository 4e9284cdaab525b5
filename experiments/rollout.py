"""Roll out an action-conditioned world model: frames generated from a start frame and actions.

  python -m experiments.rollout --workdir=/tmp/world_model --actions=RRRDDLLUU --out=rollout.gif
  python -m experiments.rollout --workdir=/tmp/world_model --interactive --out=play.gif

--actions: one letter per generated frame after the start frame (S stay, U up, D down, L left,
R right). The start is the first frame of clip --start_clip of the environment the model was
trained on (its held-out split; read from the workdir's config.json), or --input (an image).
Rollouts longer than the training clips slide the deep block's window. --interactive reads the
actions from stdin, one letter per line ('q' or end of input stops), and writes each frame to
OUT_frames/ as soon as it is final (the denoiser waits for its look-ahead of frames, so it runs
a few actions behind what was typed; --denoise=none shows each frame at once). Writes OUT (GIF
or MP4) and prints the agent's position in every frame.
"""

import logging
import sys

from absl import app, flags
import ml_collections
import numpy as np

from data_pipeline import agent_world, sources
from experiments import cli
from experiments.sample import load_frames, model_directory
from starflow_jax import checkpoint, fileio, media
from starflow_jax.errors import UserError
from starflow_jax.sampling import VideoSampler, options_from_defaults

FLAGS = flags.FLAGS
log = logging.getLogger("starflow_jax.rollout")


def define_flags():
  flags.DEFINE_string("workdir", None, "training workdir of a world model (or its model directory with --input)")
  flags.DEFINE_string("actions", "", "actions after the start frame, e.g. RRRUUL (S, U, D, L, R)")
  flags.DEFINE_bool("interactive", False, "read one action per line from stdin instead")
  flags.DEFINE_integer("start_clip", 0, "held-out clip of the environment whose first frame starts the rollout")
  flags.DEFINE_string("input", None, "a start image instead (png/jpg, resized to the model's frames)")
  flags.DEFINE_enum("method", None, ["jacobi", "sequential"], "decoding of the flow inverse")
  flags.DEFINE_float("guidance", None, "classifier-free guidance on the actions (0: none)")
  flags.DEFINE_enum("denoise", "auto", ["auto", "learned", "score", "none"], "final denoising step")
  flags.DEFINE_integer("seed", 0, "noise seed")
  flags.DEFINE_integer("fps", 4, "frames per second of the written video")
  flags.DEFINE_string("out", "rollout.gif", "output path (.gif or .mp4)")


def environment(workdir: str) -> agent_world.AgentWorldSource:
  """The held-out agent environment of a training workdir (its saved config)."""
  path = fileio.as_path(workdir) / "config.json"
  if not path.exists():
    raise UserError(f"{workdir} has no config.json naming the environment; give the training workdir, "
                    "or --input=start.png")
  config = ml_collections.ConfigDict(fileio.read_json(path))
  if config.data.source != "agent_world":
    raise UserError(f"{workdir} was trained on data.source={config.data.source!r}, not an agent world; "
                    "give --input=start.png")
  return agent_world.AgentWorldSource(sources.agent_world_config(config.data, "eval"))


def start_frame(sampler: VideoSampler) -> np.ndarray:
  """The start frame [1, 1, H, W, 3] in [-1, 1]."""
  if FLAGS.input:
    return load_frames(FLAGS.input, sampler.pixel_size, 1)[None]
  clip = environment(FLAGS.workdir)[FLAGS.start_clip]["video"][:1]
  return media.from_uint8(clip)[None]


class StopRollout(Exception):
  """The interactive player stopped ('q' or the end of stdin)."""


def stdin_actions(frame: int) -> int:
  """The action of `frame` read from stdin (frame 0, the start, needs none)."""
  if frame == 0:
    return 0
  while True:
    print(f"action for frame {frame} [S/U/D/L/R, q to stop]: ", end="", flush=True)
    line = sys.stdin.readline()
    if not line or line.strip().lower() == "q":
      raise StopRollout
    try:
      return agent_world.parse_actions(line.strip())[0]
    except UserError as e:
      print(e)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cli.setup_logging()
  if not FLAGS.interactive and not FLAGS.actions:
    raise UserError("give --actions=RRUL... (or --interactive)")
  actions = [0] + (agent_world.parse_actions(FLAGS.actions) if FLAGS.actions else [])
  bundle = checkpoint.load_bundle(model_directory(FLAGS.workdir))
  if not bundle.config.num_actions:
    raise UserError(f"{FLAGS.workdir} is not an action-conditioned model (model.num_actions = 0)")
  options = options_from_defaults(bundle.sampling_defaults,
                                  method=FLAGS.method,
                                  guidance=FLAGS.guidance,
                                  denoise=FLAGS.denoise,
                                  progress=False)
  sampler = VideoSampler(bundle, options)
  start = start_frame(sampler)
  if FLAGS.interactive:
    stream = sampler.stream(None, None, FLAGS.seed, condition_video=start, actions=stdin_actions)
  else:
    stream = sampler.stream(None, len(actions), FLAGS.seed, condition_video=start, actions=np.asarray([actions]))
  frames = write_frames(stream)
  path = fileio.as_path(FLAGS.out)
  written = media.save_mp4(path, frames, fps=FLAGS.fps) if path.suffix == ".mp4" else media.save_gif(
      path, frames, fps=FLAGS.fps)
  print(f"wrote {written or path} ({len(frames)} frames)")


def write_frames(stream) -> np.ndarray:
  """The stream's frames [T, H, W, 3], each to OUT_frames/ in interactive mode, with the agent's
  detected position printed."""
  folder = fileio.as_path(str(FLAGS.out).rsplit(".", 1)[0] + "_frames")
  if FLAGS.interactive and folder.exists() and any(folder.iterdir()):
    raise UserError(f"{folder} already holds frames; remove it or choose another --out")
  frames = []
  try:
    for frame in stream:
      frame = np.asarray(frame)[0]
      if FLAGS.interactive:
        media.save_png(folder / f"frame_{len(frames):05d}.png", frame)
      centre = agent_world.agent_centre(frame)
      where = "not seen" if centre is None else f"at row {centre[0]:.1f}, col {centre[1]:.1f}"
      print(f"frame {len(frames)}: agent {where}", flush=True)
      frames.append(frame)
  except (StopRollout, KeyboardInterrupt):  # stdin ended ('q'), or Ctrl-C
    log.info("stopped after %d frames", len(frames))
  if not frames:
    raise UserError("no frame was generated")
  return np.stack(frames)


if __name__ == "__main__":
  define_flags()
  cli.run(main)
