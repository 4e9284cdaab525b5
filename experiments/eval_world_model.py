"""Measures an action-conditioned world model of the agent environment (configs/world_model.py).

  python -m experiments.eval_world_model --workdir=/tmp/world_model [--out=world_model.json]

Three figures, on held-out clips of the environment the model was trained on:
  * controllability: rollouts of --length_factor x the training length (the window slides) from
    a real first frame under random actions that never push the agent into a border; a frame
    counts when the agent's detected move (`agent_world.move_of`) is the commanded one;
  * action inference by likelihood: for each observed transition (t-1 -> t) whose move was not
    blocked by a border, the action a maximising log p(x_t | x_<t, a) (the exact per-frame NLL,
    `losses.frame_nll`, on x~ = x + sigma eps as in training) against the true one;
  * planning: from a real first frame, sample the rollouts of --candidates random action
    sequences, pick the one whose predicted last frame has the agent nearest a random goal, and
    execute it in the true environment; success = within --tolerance pixels of the goal, against
    a random sequence and the best sequence in hindsight (oracle).
"""

import json

from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from data_pipeline import agent_world, sources
from experiments import cli
from starflow_jax import checkpoint, fileio, losses, media, model as model_lib
from starflow_jax.errors import UserError
from starflow_jax.sampling import VideoSampler, options_from_defaults

FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string("workdir", None, "training workdir of a world model (config.json and model/)")
  flags.DEFINE_integer("rollouts", 50, "controllability rollouts")
  flags.DEFINE_integer("length_factor", 3, "rollout length in training clip lengths")
  flags.DEFINE_integer("clips", 50, "observed clips for action inference")
  flags.DEFINE_integer("episodes", 20, "planning episodes")
  flags.DEFINE_integer("candidates", 8, "action sequences sampled per planning episode")
  flags.DEFINE_integer("horizon", 8, "actions per planned sequence")
  flags.DEFINE_float("tolerance", 2.5, "planning success radius in pixels")
  flags.DEFINE_float("guidance", None, "classifier-free guidance on the actions (default: the model's)")
  flags.DEFINE_integer("batch", 10, "rollouts per sampler call")
  flags.DEFINE_integer("seed", 0, "seed of actions, goals and noise")
  flags.DEFINE_string("out", None, "write the figures as JSON here")


def load(workdir: str, guidance: float | None):
  """(sampler, held-out environment, training clip length) of a world-model workdir."""
  path = fileio.as_path(workdir) / "config.json"
  if not path.exists():
    raise UserError(f"{workdir} has no config.json; give the training workdir of a world model")
  config = ml_collections.ConfigDict(fileio.read_json(path))
  if config.data.source != "agent_world":
    raise UserError(f"{workdir} was trained on data.source={config.data.source!r}, not the agent world")
  bundle = checkpoint.load_bundle(str(fileio.as_path(workdir) / "model"))
  sampler = VideoSampler(bundle, options_from_defaults(bundle.sampling_defaults, guidance=guidance, progress=False))
  source = agent_world.AgentWorldSource(sources.agent_world_config(config.data, "eval"))
  return sampler, source, source.config.num_frames


def _rollouts(sampler: VideoSampler, starts: np.ndarray, actions: np.ndarray, seed: int) -> np.ndarray:
  """Generated clips [K, T, H, W, 3] from start frames [K, 1, H, W, 3] under actions [K, T]."""
  videos = sampler.generate(None,
                            actions.shape[1],
                            seed,
                            condition_video=starts,
                            batch_size=len(actions),
                            actions=actions)
  return np.asarray(jax.device_get(videos))


def controllability(sampler, source, rollouts: int, length: int, batch: int, seed: int) -> dict:
  rng = np.random.default_rng(seed)
  step, matched, seen, total = source.config.step, 0, 0, 0
  for first in range(0, rollouts, batch):
    indices = range(first, min(first + batch, rollouts))
    starts = np.stack([media.from_uint8(source[i]["video"][:1]) for i in indices])
    actions = np.stack(
        [agent_world.free_actions(source.config, source[i]["agent_positions"][0], length, rng) for i in indices])
    for video, acts in zip(_rollouts(sampler, starts, actions, seed + first), actions):
      centres = [agent_world.agent_centre(frame) for frame in video]
      for t in range(1, length):
        total += 1
        if centres[t] is None or centres[t - 1] is None:
          continue
        seen += 1
        matched += agent_world.move_of(centres[t] - centres[t - 1], step) == acts[t]
  return {"frames": total, "agent_seen": seen / total, "action_followed": matched / total}


def action_inference(sampler, source, clips: int, seed: int) -> dict:
  cfg, sigma, count = sampler.config, sampler.options.noise_std, sampler.config.num_actions

  @jax.jit
  def frame_nll(params, x, actions):  # [K, T]
    out = model_lib.forward(cfg, params, x, None, actions)
    return losses.frame_nll(out.z, out.logdets)

  correct, total = 0, 0
  confusion = np.zeros((count, count), np.int64)
  for i in range(clips):
    clip = source[i]
    x = media.from_uint8(clip["video"])
    x = x + sigma * np.random.default_rng([seed, i]).standard_normal(x.shape).astype(np.float32)
    moved = np.abs(np.diff(clip["agent_positions"], axis=0)).max(axis=1) > 0
    frames = range(1, len(x))  # every transition is scored in one batch shape (no recompilation per clip)
    candidates = np.repeat(clip["actions"][None], len(frames) * count, axis=0)
    for j, t in enumerate(frames):
      candidates[j * count:(j + 1) * count, t] = np.arange(count)
    nll = np.asarray(frame_nll(sampler.params, jnp.broadcast_to(x, (len(candidates),) + x.shape), candidates))
    for j, t in enumerate(frames):
      if moved[t - 1] != (clip["actions"][t] != 0):  # blocked by a border: 'stay' and the move look alike
        continue
      guess = int(np.argmin(nll[j * count:(j + 1) * count, t]))
      confusion[clip["actions"][t], guess] += 1
      correct += guess == clip["actions"][t]
      total += 1
  return {"transitions": total, "accuracy": correct / max(total, 1), "confusion": confusion.tolist()}


def planning(sampler, source, episodes: int, candidates: int, horizon: int, tolerance: float, seed: int) -> dict:
  rng = np.random.default_rng(seed + 1)
  low, high = source.config.agent_bounds
  results = {"planner": [], "random": [], "oracle": []}
  for e in range(episodes):
    clip = source[e]
    goal = rng.uniform(low, high)
    plans = np.stack([source.random_actions(rng, horizon + 1) for _ in range(candidates)])
    starts = np.repeat(media.from_uint8(clip["video"][:1])[None], candidates, axis=0)
    predicted = [agent_world.agent_centre(video[-1]) for video in _rollouts(sampler, starts, plans, seed + e)]
    predicted_distance = [np.inf if p is None else np.linalg.norm(p - goal) for p in predicted]
    true_distance = [np.linalg.norm(source.render_rollout(e, plan)["agent_positions"][-1] - goal) for plan in plans]
    results["planner"].append(true_distance[int(np.argmin(predicted_distance))])
    results["random"].append(true_distance[0])
    results["oracle"].append(min(true_distance))
  return {
      name: {
          "success": float(np.mean(np.asarray(d) <= tolerance)),
          "mean_distance": float(np.mean(d))
      } for name, d in results.items()
  }


def main(argv):
  del argv
  cli.setup_logging()
  sampler, source, frames = load(FLAGS.workdir, FLAGS.guidance)
  report = {
      "guidance":
          sampler.options.guidance,
      "controllability":
          controllability(sampler, source, FLAGS.rollouts, FLAGS.length_factor * frames, FLAGS.batch, FLAGS.seed),
      "action_inference":
          action_inference(sampler, source, FLAGS.clips, FLAGS.seed),
      "planning":
          planning(sampler, source, FLAGS.episodes, FLAGS.candidates, FLAGS.horizon, FLAGS.tolerance, FLAGS.seed),
  }
  c, a, p = report["controllability"], report["action_inference"], report["planning"]
  print(f"controllability: {c['action_followed']:.3f} of {c['frames']} frames follow the commanded action "
        f"(agent seen in {c['agent_seen']:.3f}; {FLAGS.rollouts} rollouts of {FLAGS.length_factor * frames} frames)")
  print(f"action inference by likelihood: {a['accuracy']:.3f} of {a['transitions']} transitions")
  print(f"planning ({FLAGS.episodes} episodes, {FLAGS.candidates} candidates, horizon {FLAGS.horizon}): success "
        f"planner {p['planner']['success']:.2f}, random {p['random']['success']:.2f}, "
        f"oracle {p['oracle']['success']:.2f}")
  if FLAGS.out:
    fileio.write_text(FLAGS.out, json.dumps(report, indent=2))
    print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
