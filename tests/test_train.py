"""The train step: config validation, learning, skipped steps, first-frame drop."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl.testing import absltest

from experiments.configs import tiny_video
from starflow_jax import experiment, sharding, train
from starflow_jax.train import Trainer


def tiny_config(**train) -> ml_collections.ConfigDict:
  c = tiny_video.get_config("smoke")
  c.data.shapes.update(num_frames=3, height=8, width=8)
  c.model.update(img_size=8, channels=32, top_block_channels=32, layers_per_block=(1, 1, 1), denoiser_layers=1)
  c.text.update(width=32, num_layers=1)
  c.train.update(batch_size=8, **train)
  return c


def make_batch(config, mesh, seed=0):
  rng = np.random.default_rng(seed)
  s = config.data.shapes
  video = rng.integers(0, 256, (config.train.batch_size, s.num_frames, s.height, s.width, 3), np.uint8)
  tokens = rng.integers(3, 20, (config.train.batch_size, config.model.txt_size)).astype(np.int32)
  tokens[:, 0] = 1
  return sharding.global_batch_from_host({"video": video, "tokens": tokens}, mesh)


class ValidationTest(absltest.TestCase):

  def test_errors_name_the_field(self):
    cases = [
        (lambda c: c.model.update(patch_size=3), "config.model: .*img_size=8 is not divisible by patch_size=3"),
        (lambda c: c.model.update(head_dim=48), "not divisible by head_dim=48"),
        (lambda c: c.mesh.update(shape=(3, 4, 1)), r"mesh shape \(3, 4, 1\) needs 12 devices but 8"),
        (lambda c: c.train.update(batch_size=12), "batch_size=12 is not divisible by the data-parallel size 8"),
        (lambda c: c.model.update(img_size=16), "set model.img_size=8"),
        (lambda c: c.model.update(in_channels=4), "set model.in_channels accordingly"),
        (lambda c: c.model.update(learnable_self_denoiser=False), "flow_score_matching=True needs"),
        (lambda c: c.text.update(kind="none"), "text-conditioned"),
        (lambda c: c.data.update(source="nope"), "unknown data.source 'nope'"),
        (lambda c: c.train.update(warmup_steps=50), "warmup_steps=50 must be < num_steps"),
        (lambda c: c.model.update(num_actions=5), "num_actions=5 but data.source='shapes' has no actions"),
    ]
    experiment.validate_experiment(tiny_config(), num_devices=8)
    for change, message in cases:
      config = tiny_config()
      change(config)
      with self.assertRaisesRegex(ValueError, message):
        experiment.validate_experiment(config, num_devices=8)

  def test_all_configs_build(self):
    from experiments.configs import starflow_3b_t2i_256, starflow_v_7b_t2v_480p, tiny_image, world_model
    for module, arg in ((tiny_video, ""), (tiny_image, "shapes"), (starflow_3b_t2i_256, ""), (starflow_v_7b_t2v_480p,
                                                                                              ""), (world_model, "")):
      config = module.get_config(arg)
      experiment.model_config(config)
    seven_b = experiment.model_config(starflow_v_7b_t2v_480p.get_config())
    self.assertEqual(seven_b.block_layers, (2, 2, 2, 2, 2, 24))
    self.assertEqual((seven_b.channels, seven_b.deep_channels, seven_b.head_dim), (3072, 4096, 64))


class StepTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])

  def test_loss_decreases_and_denoiser_learns(self):
    config = tiny_config(lr=3e-3, warmup_steps=1, num_steps=30)
    trainer = Trainer(config, self.mesh)
    state = trainer.init_state(0)
    batch = make_batch(config, self.mesh)
    losses = []
    for _ in range(10):
      state, m = trainer.step(state, batch)
      losses.append(float(m["loss"]))
    self.assertLess(losses[-1], losses[0] - 0.1, losses)
    self.assertEqual(int(state.step), 10)
    self.assertEqual(int(state.skipped_steps), 0)
    # With the flow frozen the score target is fixed, and the denoiser regresses onto it.
    config = tiny_config(lr=0.0, min_lr=0.0, denoiser_lr=3e-3, warmup_steps=1, num_steps=30)
    trainer = Trainer(config, self.mesh)
    state = trainer.init_state(0)
    den = []
    for _ in range(10):
      state, m = trainer.step(state, batch)
      den.append(float(m["denoiser_loss"]))
    self.assertLess(den[-1], 0.5 * den[0], den)

  def test_non_finite_and_oversized_steps_are_skipped(self):
    """guarded_update on gradients with a NaN, and on finite ones above the clip with the official
    grad skip on: params, optimizer state and EMA untouched, the step counted; a normal update
    changes them."""
    config = tiny_config(grad_clip=1.0, grad_skip_after=0, grad_skip=True, ema_decay=0.9)
    trainer = Trainer(config, self.mesh)
    state = trainer.init_state(0)
    grads = jax.tree_util.tree_map(lambda p: jnp.full(p.shape, 0.01, p.dtype), state.params)
    stats = {k: jnp.float32(0.5) for k in ("loss", "loss_z", "loss_logdet", "denoiser_loss", "score_square")}
    update = jax.jit(
        lambda state, grads, stats: train.guarded_update(trainer.modules, trainer.settings, state, grads, stats))
    scaled = lambda factor: jax.tree_util.tree_map(lambda g: g * factor /
                                                   (1.0 + float(train._global_norm(grads))), grads)
    poisoned = jax.tree_util.tree_map(lambda g: g.at[(0,) * g.ndim].set(jnp.nan) if g.size else g, scaled(0.5))
    before = jax.device_get(state)
    for name, g, st in (("non-finite gradient", poisoned, stats), ("non-finite loss", scaled(0.5), {
        **stats, "loss": jnp.float32(jnp.nan)
    }), ("above the clip", scaled(1e3), stats)):
      new_state, metrics = update(state, g, st)
      self.assertEqual(int(metrics["skipped"]), 1, name)
      self.assertEqual((int(new_state.step), int(new_state.skipped_steps)), (1, 1), name)
      for field in ("params", "opt_state", "ema_params"):
        jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(getattr(new_state, field)),
                               getattr(before, field))
    new_state, metrics = update(state, scaled(0.5), stats)  # under the clip: applied
    self.assertEqual(int(metrics["skipped"]), 0)
    changed = [
        not np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(jax.device_get(new_state.params)),
                                                 jax.tree_util.tree_leaves(before.params))
    ]
    self.assertTrue(any(changed))

  def test_first_frame_drop_variant(self):
    config = tiny_config(drop_first_frame=0.5)
    trainer = Trainer(config, self.mesh)
    state = trainer.init_state(0)
    state, m = trainer.step(state, make_batch(config, self.mesh), drop_first_frame=True)
    self.assertTrue(np.isfinite(float(m["loss"])))
    self.assertEqual(int(m["skipped"]), 0)


def assert_gradients_close(test, got, want, rtol: float):
  """Each leaf within rtol of its own largest entry (float32 rounding of reordered sums; a leaf
  that is exactly zero, such as a zero-initialised output layer's, must stay zero)."""
  wanted = jax.tree_util.tree_flatten_with_path(want)[0]
  test.assertEqual(jax.tree_util.tree_structure(got), jax.tree_util.tree_structure(want))
  test.assertGreater(sum(float(np.abs(np.asarray(b)).max()) for _, b in wanted), 0.0)
  for (path, b), a in zip(wanted, jax.tree_util.tree_leaves(got)):
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_allclose(a, b, rtol=0, atol=rtol * float(np.abs(b).max()), err_msg=jax.tree_util.keystr(path))


class LargeBatchTest(absltest.TestCase):
  """Gradient accumulation, the parameters' EMA and remat."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
    cls.big_batch = cls._gradients()[2]  # one batch of 8, plain layers

  @classmethod
  def _gradients(cls, **changes):
    model = changes.pop("model", {})
    config = tiny_config(**changes)
    config.model.update(**model)
    trainer = Trainer(config, cls.mesh)
    state = trainer.init_state(0)
    return trainer, state, trainer.gradients(state, make_batch(config, cls.mesh))

  def test_accumulated_microbatches_equal_the_big_batch(self):
    big, big_stats = self.big_batch
    _, _, (accumulated, stats) = self._gradients(grad_accum_steps=4)  # 4 microbatches of 2
    assert_gradients_close(self, accumulated, big, rtol=2e-5)
    for key in ("loss", "loss_z", "loss_logdet", "denoiser_loss", "score_square"):
      np.testing.assert_allclose(stats[key], big_stats[key], rtol=1e-5, err_msg=key)
    with self.assertRaisesRegex(ValueError, "multiple of grad_accum_steps"):
      experiment.validate_experiment(tiny_config(grad_accum_steps=3), num_devices=1)

  def test_remat_changes_memory_not_gradients(self):
    trainer, state, (remat, _) = self._gradients(model={"remat": True})
    assert_gradients_close(self, remat, self.big_batch[0], rtol=1e-6)
    batch = make_batch(trainer.config, self.mesh)
    program = jax.make_jaxpr(lambda state, batch: train.accumulated_gradients(
        trainer.modules, trainer.settings, state.params,
        *train.prepare_inputs(trainer.modules, trainer.settings, state, batch, False, False)))(state, batch)
    self.assertIn("remat", str(program))  # the layers really are rematerialised

  def test_ema_follows_the_parameters_is_checkpointed_and_exported(self):
    """Three accumulated steps (2 microbatches each) with an EMA, saved and exported as
    train_and_evaluate does it."""
    import os
    from starflow_jax import checkpoint, train_loop
    from starflow_jax.train_checkpoint import TrainCheckpointer, export_model
    config = tiny_video.get_config("micro")
    config.mesh.update(shape=(1, 1, 1))
    config.train.update(num_steps=3, warmup_steps=1, ema_decay=0.5, drop_first_frame=0.0, grad_accum_steps=2)
    trainer = Trainer(config, self.mesh)
    state = trainer.init_state(0)
    expected = jax.device_get(state.params)
    for step in range(3):
      state, metrics = trainer.step(state, make_batch(config, self.mesh, seed=step))
      self.assertEqual(int(metrics["skipped"]), 0)
      expected = jax.tree_util.tree_map(lambda e, p: 0.5 * e + 0.5 * p, expected, jax.device_get(state.params))
    ema = jax.device_get(state.ema_params)
    assert_gradients_close(self, ema, expected, rtol=1e-6)
    self.assertFalse(
        all(
            np.array_equal(a, b)
            for a, b in zip(jax.tree_util.tree_leaves(ema), jax.tree_util.tree_leaves(jax.device_get(state.params)))))
    workdir = self.create_tempdir().full_path
    iterator = iter(train_loop.build_train_data(trainer.experiment, self.mesh))
    ckpt = TrainCheckpointer(workdir, 3, 2)
    ckpt.save(3, state, iterator, config, force=True)
    ckpt.wait()
    restored = ckpt.restore(3, trainer.abstract_state, iter(train_loop.build_train_data(trainer.experiment, self.mesh)))
    ckpt.close()
    jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(restored.ema_params), ema)
    export_model(workdir, trainer.final_params(state), trainer.model_config, trainer.text_config)
    bundle = checkpoint.load_bundle(os.path.join(workdir, "model"))  # the EMA is the model
    jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(bundle.params), ema["model"])


class ResumeStepTest(absltest.TestCase):

  def test_processes_that_see_different_checkpoints_stop_with_one_line(self):
    """Hosts that list different latest steps (an unshared --workdir, or one listed before the
    last job's save was visible) would pair the wrong collectives and hang: a UserError instead."""
    from unittest import mock
    from starflow_jax import distributed
    from starflow_jax.errors import UserError
    from starflow_jax.train_checkpoint import TrainCheckpointer
    ckpt = TrainCheckpointer(self.create_tempdir().full_path, 3, 2)
    self.assertIsNone(ckpt.resume_step())  # one process, nothing saved
    with mock.patch.object(distributed, "every_process_value", return_value=[-1, 8]):
      with self.assertRaisesRegex(UserError, r"process 0: none, process 1: 8.*same shared --workdir"):
        ckpt.resume_step()
    with mock.patch.object(distributed, "every_process_value", return_value=[-1, -1]):
      self.assertIsNone(ckpt.resume_step())
    ckpt.close()

  def test_first_frame_drop_schedule_is_a_function_of_seed_and_step(self):
    """What a resumed (or restarted multi-host) run decides at step n is what the uninterrupted
    run decided: nothing but (seed, step) enters, so the multi-host tests can train without it."""
    config = tiny_config(drop_first_frame=0.25)
    first, again = (experiment.Experiment.from_config(config) for _ in range(2))
    schedule = [first.drop_first_frame_at(step) for step in range(400)]
    self.assertEqual([again.drop_first_frame_at(step) for step in reversed(range(400))], schedule[::-1])
    self.assertBetween(sum(schedule), 60, 140)  # ~100 of 400 at p = 0.25
    config.seed += 1
    self.assertNotEqual([experiment.Experiment.from_config(config).drop_first_frame_at(s) for s in range(400)],
                        schedule)


if __name__ == "__main__":
  absltest.main()
