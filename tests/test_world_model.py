"""Action-conditioned world models: per-frame actions in the deep block are causal (an action
at frame n changes nothing before n), the likelihood stays exact (the inverse recovers the
clip), every decoder agrees with actions (sequential, Jacobi, the sampler, a stream), and the
procedural agent environment is deterministic and moves its agent as commanded."""

import os
import subprocess
import sys

import imageio.v3 as iio
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from data_pipeline import agent_world
from starflow_jax import inverse, losses, model as model_lib
from starflow_jax.checkpoint import ModelBundle
from starflow_jax.errors import UserError
from starflow_jax.jacobi import JacobiOptions
from starflow_jax.sampling import SamplingOptions, VideoSampler
from tests import helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_ACTIONS = 5
CONFIG = helpers.tiny_video_config(num_actions=NUM_ACTIONS,
                                   temporal_causal=2,
                                   txt_size=0,
                                   txt_dim=0,
                                   cond_top_only=False,
                                   conditional_denoiser=False)


class ActionConditioningTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.params = helpers.random_params(CONFIG, std=0.1)
    cls.x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 4, 4, 2))
    cls.actions = jnp.array([[0, 1, 2, 3, 4], [4, 3, 2, 1, 0]], jnp.int32)

  def test_an_action_changes_nothing_before_its_frame(self):
    base = model_lib.forward(CONFIG, self.params, self.x, None, self.actions)
    base_nll = losses.frame_nll(base.z, base.logdets)
    for frame in range(5):
      moved = model_lib.forward(CONFIG, self.params, self.x, None, self.actions.at[:, frame].add(1) % NUM_ACTIONS)
      nll = losses.frame_nll(moved.z, moved.logdets)
      changed = np.abs(np.asarray(nll - base_nll)).max(axis=0) > 0
      np.testing.assert_array_equal(changed[:frame], False, f"action at frame {frame}")
      self.assertTrue(changed[frame], f"the action at frame {frame} does not reach its frame")

  def test_no_actions_means_the_null_action(self):
    null = jnp.full_like(self.actions, NUM_ACTIONS)
    a = model_lib.forward(CONFIG, self.params, self.x, None, None)
    b = model_lib.forward(CONFIG, self.params, self.x, None, null)
    np.testing.assert_array_equal(a.z, b.z)

  def test_inverse_recovers_the_clip_under_its_actions(self):
    out = model_lib.forward(CONFIG, self.params, self.x, None, self.actions)
    for block_inverse in (inverse.block_inverse_for(None),
                          inverse.block_inverse_for(JacobiOptions(block_size=2, threshold=0.0, max_iter=20))):
      x = inverse.invert(CONFIG, self.params, out.z, block_inverse=block_inverse, actions=self.actions)
      np.testing.assert_allclose(x, self.x, atol=2e-4 * float(jnp.abs(self.x).max()))
    wrong = inverse.invert(CONFIG, self.params, out.z, actions=self.actions[::-1])
    self.assertGreater(float(jnp.abs(wrong - self.x).max()), 1e-2)

  def test_sampler_and_stream_follow_invert_with_actions(self):
    """Guided by the null action in the doubled batch; windows slide (7 frames, window 3)."""
    bundle = ModelBundle(CONFIG, self.params)
    actions = np.array([[0, 1, 1, 4, 4, 2, 0], [3, 3, 0, 2, 1, 4, 4]], np.int32)
    options = SamplingOptions(method="sequential", guidance=1.5, denoise="none", progress=False)
    sampler = VideoSampler(bundle, options)
    z = sampler.frame_noise(0, 2, 0, 7)
    reference = inverse.invert(CONFIG, self.params, z, guidance=1.5, actions=actions)
    # Guidance acts on the actions (no text condition here): it moves the samples, except where
    # every action is the null one (both halves of the doubled batch are then the same).
    unguided = inverse.invert(CONFIG, self.params, z, guidance=0.0, actions=actions)
    self.assertGreater(float(jnp.abs(reference - unguided).max()), 1e-3)
    null = np.full_like(actions, NUM_ACTIONS)
    np.testing.assert_allclose(inverse.invert(CONFIG, self.params, z, guidance=1.5, actions=null),
                               inverse.invert(CONFIG, self.params, z, guidance=0.0, actions=null),
                               rtol=0,
                               atol=4e-6 * float(jnp.abs(reference).max()))
    np.testing.assert_allclose(sampler.sample_latents(z, None, None, actions=actions),
                               reference,
                               rtol=0,
                               atol=4e-6 * float(jnp.abs(reference).max()))
    windowed = VideoSampler(
        bundle,
        SamplingOptions(method="jacobi",
                        guidance=1.5,
                        denoise="none",
                        window=3,
                        context=2,
                        jacobi=JacobiOptions(block_size=2, threshold=1e-3),
                        progress=False))
    generated = np.asarray(windowed.generate(None, 7, batch_size=2, actions=actions))
    streamed = np.stack([np.asarray(f) for f in windowed.stream(None, 7, batch_size=2, actions=actions)], axis=1)
    np.testing.assert_array_equal(streamed, generated)
    asked = []
    interactive = windowed.stream(None, 7, batch_size=2, actions=lambda f: asked.append(f) or actions[:, f])
    np.testing.assert_array_equal(np.stack([np.asarray(f) for f in interactive], axis=1), generated)
    self.assertEqual(asked, list(range(7)))  # each frame's action asked once, in order
    other = np.asarray(windowed.generate(None, 7, batch_size=2, actions=np.where(np.arange(7) >= 4, 0, actions)))
    changed = np.abs(other - generated).max(axis=(0, 2, 3, 4)) > 0
    np.testing.assert_array_equal(changed, np.arange(7) >= 4)

  def test_bad_actions_name_the_problem(self):
    sampler = VideoSampler(ModelBundle(CONFIG, self.params), SamplingOptions(method="sequential", progress=False))
    with self.assertRaisesRegex(UserError, "knows 0..4"):
      sampler.generate(None, 3, batch_size=1, actions=[[0, 9, 0]])
    with self.assertRaisesRegex(UserError, "at least 3 latent frames"):
      sampler.generate(None, 3, batch_size=1, actions=[[0, 1]])
    plain = helpers.tiny_video_config(txt_size=0, txt_dim=0, cond_top_only=False, conditional_denoiser=False)
    plain_sampler = VideoSampler(ModelBundle(plain, helpers.random_params(plain)), SamplingOptions(progress=False))
    with self.assertRaisesRegex(UserError, "takes no actions"):
      plain_sampler.generate(None, 3, actions=[[0, 1, 2]])
    with self.assertRaisesRegex(UserError, "no official equivalent"):
      CONFIG.replace(denoiser_layers=8).to_official_kwargs()


class ActionTrainingTest(absltest.TestCase):

  def test_a_train_step_reaches_the_action_embeddings(self):
    """The batch the loop builds from the agent world carries the actions into the step: the
    embedding rows of the actions in the batch get gradients (the others and dropped ones none)."""
    from experiments.configs import world_model
    from starflow_jax import experiment, sharding, train, train_loop
    config = world_model.get_config("smoke")
    config.mesh.update(shape=(1, 1, 1))
    config.train.update(drop_label=0.0)
    exp = experiment.validate_experiment(config, num_devices=1)
    mesh = exp.mesh.make()
    trainer = train.Trainer(config, mesh, exp)
    host = next(iter(train_loop.build_train_data(exp, mesh)))
    batch = sharding.global_batch_from_host(train_loop.model_inputs(host), mesh)
    state = trainer.init_state(0)  # perturbed: a fresh flow is the identity (zero output layers)
    state = trainer.state_with_params(state, helpers.perturb(jax.device_get(state.params["model"]), 1, 0.05))
    grads, _ = trainer.gradients(state, batch)
    rows = np.abs(np.asarray(grads["model"]["deep_block"]["action_embed"]["embedding"])).sum(axis=1)
    np.testing.assert_array_equal(rows > 0, np.isin(np.arange(NUM_ACTIONS + 1), host["actions"]))


class AgentWorldTest(absltest.TestCase):

  def test_clips_are_deterministic_and_the_agent_obeys(self):
    source = agent_world.AgentWorldSource(agent_world.AgentWorldConfig(num_frames=12, max_objects=2))
    a, b = source[7], source[7]
    np.testing.assert_array_equal(a["video"], b["video"])
    self.assertFalse(np.array_equal(a["video"], source[8]["video"]))
    step = source.config.step
    low, high = source.config.agent_bounds
    for t in range(1, 12):
      expected = np.clip(a["agent_positions"][t - 1] + step * agent_world.MOVES[a["actions"][t]], low, high)
      np.testing.assert_allclose(a["agent_positions"][t], expected)
    # The agent is seen where it is (drawn on top of everything), and its moves read back.
    frames = a["video"].astype(np.float32) / 127.5 - 1
    centres = [agent_world.agent_centre(f) for f in frames]
    np.testing.assert_allclose(np.stack(centres), a["agent_positions"], atol=0.51)
    for t in range(1, 12):
      moved = a["agent_positions"][t] - a["agent_positions"][t - 1]
      if np.abs(moved).max() > 0:  # not stopped at a border
        self.assertEqual(agent_world.move_of(centres[t] - centres[t - 1], step), a["actions"][t])

  def test_rollout_ground_truth_and_action_strings(self):
    source = agent_world.AgentWorldSource()
    actions = agent_world.parse_actions("srrdd")
    self.assertEqual(actions, [0, 4, 4, 2, 2])
    rollout = source.render_rollout(3, actions)
    np.testing.assert_allclose(rollout["agent_positions"][0], source[3]["agent_positions"][0])
    self.assertEqual(rollout["video"].shape, (5, 16, 16, 3))
    with self.assertRaisesRegex(UserError, "use the letters"):
      agent_world.parse_actions("RX")
    free = agent_world.free_actions(source.config, np.array([3.0, 3.0]), 40, np.random.default_rng(0))
    path = agent_world.agent_path(source.config, np.array([3.0, 3.0]), free)
    moved = np.abs(np.diff(path, axis=0)).max(axis=1)
    np.testing.assert_array_equal(moved > 0, free[1:] != 0)  # never blocked by a border


class WorldModelCommandsTest(absltest.TestCase):
  """configs/world_model.py:smoke trained for 10 steps, then the rollout and evaluation commands."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    from experiments.configs import world_model
    from starflow_jax import train_loop
    cls.workdir = os.path.join(absltest.get_default_test_tmpdir(), "world_model_smoke")
    if not os.path.isdir(os.path.join(cls.workdir, "model")):
      config = world_model.get_config("smoke")
      config.mesh.update(shape=(1, 1, 1))
      train_loop.train_and_evaluate(config, cls.workdir)

  def _rollout(self, argv, stdin=""):
    proc = subprocess.run([sys.executable, "-m", "experiments.rollout", f"--workdir={self.workdir}"] + argv,
                          input=stdin,
                          capture_output=True,
                          text=True,
                          timeout=300,
                          cwd=REPO,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    return proc.returncode, proc.stdout + proc.stderr

  def test_rollout_from_actions_and_from_stdin(self):
    out = os.path.join(self.create_tempdir().full_path, "rollout.gif")
    status, printed = self._rollout(["--actions=RRDL", f"--out={out}"])
    self.assertEqual(status, 0, printed)
    self.assertIn("frame 4: agent", printed)
    self.assertEqual(iio.imread(out, index=None).shape[0], 5)
    status, printed = self._rollout(["--interactive", "--denoise=none", f"--out={out}"], stdin="r\nbad\nd\nq\n")
    self.assertEqual(status, 0, printed)
    self.assertIn("use the letters", printed)  # 'bad' asked again
    self.assertEqual(iio.imread(out, index=None).shape[0], 3)  # the start, then R and D
    self.assertLen(os.listdir(out[:-4] + "_frames"), 3)
    status, printed = self._rollout([f"--out={out}"])
    self.assertEqual((status, printed.strip().splitlines()[-1]),
                     (2, "error: give --actions=RRUL... (or --interactive)"))

  def test_evaluation_reports_the_three_figures(self):
    from experiments import eval_world_model
    sampler, source, frames = eval_world_model.load(self.workdir, None)
    control = eval_world_model.controllability(sampler, source, 2, 3 * frames, 2, 0)
    self.assertEqual(control["frames"], 2 * (3 * frames - 1))
    inference = eval_world_model.action_inference(sampler, source, 2, 0)
    self.assertGreater(inference["transitions"], 0)
    self.assertEqual(sum(map(sum, inference["confusion"])), inference["transitions"])
    plans = eval_world_model.planning(sampler, source, 1, 2, 3, 2.5, 0)
    self.assertEqual(set(plans), {"planner", "random", "oracle"})
    self.assertLessEqual(plans["oracle"]["mean_distance"], plans["random"]["mean_distance"])


if __name__ == "__main__":
  absltest.main()
