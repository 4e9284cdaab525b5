"""The sampling pipeline and CLI: text-to-video, image-to-video, continuation, video-to-video,
6x-length generation with a sliding window, and no recompilation per frame or per window."""

import contextlib
import dataclasses
import io
import os

import imageio.v3 as iio
import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from absl.testing import absltest
from PIL import Image

from experiments import sample as sample_cli
from experiments.configs import tiny_video
from starflow_jax import checkpoint, decoding, inverse, model as model_lib, tokens, train_loop
from starflow_jax.checkpoint import ModelBundle
from starflow_jax.errors import UserError
from starflow_jax.jacobi import JacobiOptions
from starflow_jax.sampling import SamplingOptions, VideoSampler
from tests import helpers

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"  # a program loaded from the persistent cache


@contextlib.contextmanager
def count_compilations():
  """Counts the programs XLA compiled inside the block, or loaded compiled from the test run's
  persistent compilation cache (tests/conftest.py) instead."""
  count = [0]

  def on_duration(event, duration, **kwargs):
    if event == COMPILE_EVENT:
      count[0] += 1

  def on_event(event, **kwargs):
    if event == CACHE_HIT_EVENT:
      count[0] += 1

  jax.monitoring.register_event_duration_secs_listener(on_duration)
  jax.monitoring.register_event_listener(on_event)
  try:
    yield count
  finally:
    jax.monitoring.unregister_event_duration_listener(on_duration)
    jax.monitoring.unregister_event_listener(on_event)


def run_cli(argv):
  if "workdir" not in flags.FLAGS:
    sample_cli.define_flags()
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["sample"] + argv)
  sample_cli.main(["sample"])


class TrainedModelTest(absltest.TestCase):
  """A micro text-to-video model trained for 12 steps, sampled through the CLI."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = absltest.get_default_test_tmpdir()
    cls.workdir = os.path.join(cls.tmp, "micro_run")
    config = tiny_video.get_config("micro")
    config.mesh.update(shape=(1, 1, 1))
    if not os.path.isdir(os.path.join(cls.workdir, "model")):
      train_loop.train_and_evaluate(config, cls.workdir)
    cls.prompt = "a red circle moving left"
    cls.image = os.path.join(cls.tmp, "first.png")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8) + np.array([200, 30, 30], np.uint8)).save(cls.image)
    cls.clip = os.path.join(cls.tmp, "source.gif")
    iio.imwrite(cls.clip, np.stack([np.full((8, 8, 3), v, np.uint8) for v in (10, 20)]), duration=250, loop=0)

  def _frames(self, path):
    return iio.imread(path, index=None)

  def test_text_to_video_and_long_video(self):
    out = os.path.join(self.tmp, "t2v.mp4")
    run_cli([
        f"--workdir={self.workdir}", f"--prompt={self.prompt}", "--num_frames=3", "--method=jacobi", "--guidance=2",
        f"--out={out}"
    ])
    self.assertEqual(self._frames(out.replace(".mp4", ".gif")).shape[0], 3)
    self.assertTrue(os.path.getsize(out) > 0)
    self.assertTrue(os.path.exists(out.replace(".mp4", ".png")))
    long_out = os.path.join(self.tmp, "long.gif")
    run_cli([
        f"--workdir={self.workdir}", f"--prompt={self.prompt}", "--num_frames=18", "--method=sequential",
        f"--out={long_out}"
    ])  # 6x the 3-frame training clips
    self.assertEqual(self._frames(long_out).shape[0], 18)

  def test_image_to_video_continuation_and_v2v(self):
    out = os.path.join(self.tmp, "i2v.gif")
    run_cli([
        f"--workdir={self.workdir}", "--mode=i2v", f"--input={self.image}", f"--prompt={self.prompt}", "--num_frames=3",
        "--denoise=none", f"--out={out}"
    ])
    frames = self._frames(out)
    self.assertEqual(frames.shape[0], 3)
    # The given frame (red, noise sigma 0.1 added) survives as frame 0.
    self.assertGreater(frames[0][..., 0].mean(), 150)
    self.assertLess(frames[0][..., 1].mean(), 80)
    for mode in ("continue", "v2v"):
      out = os.path.join(self.tmp, f"{mode}.gif")
      run_cli([
          f"--workdir={self.workdir}", f"--mode={mode}", f"--input={self.clip}", f"--prompt={self.prompt}",
          "--num_frames=6", f"--out={out}"
      ])
      self.assertEqual(self._frames(out).shape[0], 6)

  def test_long_video_drift_report(self):
    """experiments.eval_long_video end to end on the micro model: 2x its length, per window."""
    from experiments import eval_long_video
    report = eval_long_video.evaluate(self.workdir, multiple=2, num_prompts=2)
    self.assertEqual((report["frames"], report["length"]), (3, 6))
    for label in ("samples", "real clips"):
      self.assertEqual(report[label]["clips"], 2)
      for name, windows in report[label]["windows"].items():
        self.assertLen(windows, 2, name)
        self.assertLen(report[label]["per_frame"][name], 6, name)
    self.assertEqual(report["real clips"]["windows"]["visible"], [1.0, 1.0])
    self.assertEqual(report["real clips"]["windows"]["colour"], [1.0, 1.0])
    plot = os.path.join(self.create_tempdir().full_path, "drift.png")
    eval_long_video.save_plot(plot, report)
    self.assertEqual(Image.open(plot).format, "PNG")
    with self.assertRaisesRegex(UserError, "--multiple=1 must be >= 2"):
      eval_long_video.evaluate(self.workdir, multiple=1)
    # A causal VAE's length: 6 windows of 9 frames in 57 = 1 + 4 * 14 (54 is no such length).
    self.assertEqual([eval_long_video.long_length(9, 6, 4), eval_long_video.long_length(5, 6)], [57, 30])
    self.assertEqual(eval_long_video.long_length(9, 2, 4), 21)
    rows = eval_long_video.next_frame(self.workdir, 2, num_clips=2)  # frames 2..5 of 6 from 2 before
    self.assertEqual([r["first"] for r in rows], [0, 1, 2, 3])
    self.assertTrue(all(0 <= r["clips"] <= 2 for r in rows))
    with self.assertRaisesRegex(UserError, "--next_frame_context=3 must be in"):
      eval_long_video.next_frame(self.workdir, 3)

  def test_stream_writes_frames_as_they_come(self):
    tmp = self.create_tempdir().full_path
    out = os.path.join(tmp, "stream.gif")
    argv = [
        f"--workdir={self.workdir}", f"--prompt={self.prompt}", "--num_frames=7", "--stream", "--method=jacobi",
        "--switch_prompt=4:a blue square moving up", f"--out={out}"
    ]
    with contextlib.redirect_stdout(io.StringIO()) as printed:
      run_cli(argv)
    self.assertRegex(printed.getvalue(), r"first frame after [0-9.]+s; 7 frames in [0-9.]+s \([0-9.]+ frames/s")
    folder = os.path.join(tmp, "stream_frames")
    self.assertEqual(sorted(os.listdir(folder)), [f"frame_{i:05d}.png" for i in range(7)])
    self.assertEqual(self._frames(out).shape[0], 7)
    with self.assertRaisesRegex(ValueError, "stream_frames already holds frames; remove it"):
      run_cli(argv)  # the frames of the first run are kept
    self.assertLen(os.listdir(folder), 7)
    for bad, message in (("--switch_prompt=x:red", "must be FRAME:CAPTION"), ("--return_sequence", "use one")):
      with self.assertRaisesRegex(ValueError, message):
        run_cli(argv[:-1] + [bad, f"--out={os.path.join(tmp, 'other.gif')}"])

  def test_bad_requests_name_the_problem(self):
    with self.assertRaisesRegex(ValueError, "only 2 are generated"):
      run_cli([
          f"--workdir={self.workdir}", "--mode=continue", f"--input={self.clip}", f"--prompt={self.prompt}",
          "--num_frames=2", f"--out={os.path.join(self.tmp, 'x.gif')}"
      ])
    with self.assertRaisesRegex(ValueError, "neither a model directory nor a training workdir"):
      run_cli([f"--workdir={self.tmp}", f"--prompt={self.prompt}"])


class SamplerTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.bundle, cls.cond = helpers.golden_video_bundle()

  def test_no_recompilation_per_frame_or_window(self):
    """Counts every XLA compilation (jitted and eager). A new video length compiles a fixed set
    of programs; more frames or more window slides must not add any."""
    options = SamplingOptions(method="jacobi", denoise="learned", noise_std=0.3, window=3, progress=False)
    sampler = VideoSampler(self.bundle, options)
    sampler.generate(None, 6, cond=self.cond)  # warm-up: programs that do not depend on length
    new_length_compiles = []
    for frames in (9, 18):  # 3x and 6x the window: 4 and 13 window slides
      with count_compilations() as count:
        sampler.generate(None, frames, cond=self.cond)
      new_length_compiles.append(count[0])
      with count_compilations() as again:
        sampler.generate(None, frames, cond=self.cond, seed=1)
      self.assertEqual(again[0], 0, f"a second call for {frames} frames compiled again")
    self.assertEqual(new_length_compiles[0], new_length_compiles[1],
                     "compilations grew with the number of frames / windows")

  def test_prefix_frames_give_the_same_continuation(self):
    sampler = VideoSampler(self.bundle, SamplingOptions(method="sequential", denoise="none", progress=False))
    z = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 4, 4, 4))
    full = sampler.sample_latents(z, self.cond, None)
    for given in (1, 2):
      continued = sampler.sample_latents(z, self.cond, None, prefix=full[:, :given])
      np.testing.assert_array_equal(continued[:, :given], full[:, :given])
      np.testing.assert_allclose(continued, full, atol=2e-5)

  def test_window_covering_the_video_changes_nothing(self):
    z = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 4, 4, 4))
    plain = VideoSampler(self.bundle, SamplingOptions(method="sequential", denoise="none", progress=False))
    windowed = VideoSampler(self.bundle, SamplingOptions(method="sequential", denoise="none", window=3, progress=False))
    np.testing.assert_array_equal(plain.sample_latents(z, self.cond, None), windowed.sample_latents(z, self.cond, None))

  def test_sliding_window_jacobi_matches_sequential_at_tau_zero(self):
    z = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 4, 4, 4))
    from starflow_jax.jacobi import JacobiOptions
    seq = VideoSampler(self.bundle,
                       SamplingOptions(method="sequential", denoise="none", window=3, context=2, progress=False))
    jac = VideoSampler(
        self.bundle,
        SamplingOptions(method="jacobi",
                        jacobi=JacobiOptions(block_size=4, threshold=0.0, max_iter=17),
                        denoise="none",
                        window=3,
                        context=2,
                        progress=False))
    a, b = seq.sample_latents(z, self.cond, None), jac.sample_latents(z, self.cond, None)
    np.testing.assert_allclose(a, b, atol=4e-6 * float(jnp.abs(a).max()))


class AutoMethodTest(absltest.TestCase):
  """method 'auto': per flow block, Jacobi or token by token from the iterations Jacobi takes on
  the call's first frame; each choice runs the very programs of that method."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.bundle, cls.cond = helpers.golden_video_bundle()
    cls.z = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 4, 4, 4))

  def sample(self, method, cost=None):
    options = SamplingOptions(method=method,
                              jacobi=JacobiOptions(block_size=4, threshold=1e-3),
                              denoise="none",
                              guidance=1.5,
                              iteration_cost=cost,
                              progress=False)
    sampler = VideoSampler(self.bundle, options)
    return sampler, np.asarray(sampler.sample_latents(self.z, self.cond, None))

  def test_the_cheaper_method_per_flow_block(self):
    _, jacobi_out = self.sample("jacobi")
    _, seq_out = self.sample("sequential")
    names = {"deep_first", "deep", "shallow_0", "shallow_1"}
    cheap, out = self.sample("auto", cost=1e-3)  # iterations nearly free: Jacobi everywhere
    self.assertEqual(cheap.plan, dict.fromkeys(names, "jacobi"))
    np.testing.assert_array_equal(out, jacobi_out)
    dear, out = self.sample("auto", cost=1e3)  # iterations dearer than whole frames: token by token
    self.assertEqual(dear.plan, dict.fromkeys(names, "sequential"))
    np.testing.assert_array_equal(out, seq_out)
    dear.set_params(self.bundle.params)  # new weights converge differently: measured again
    self.assertIsNone(dear.plan)
    # The choice follows the iterations measured on the first two frames: a cost between the
    # flow blocks' break-evens splits them, and each block then decodes by its own method (the
    # deep block's first frame apart from the later ones).
    from starflow_jax import inverse, jacobi, tokens
    from starflow_jax.rope import TokenGrid
    z_tok, grid = tokens.patchify(self.z, self.bundle.config.patch_size)
    deep_cond, guidance = inverse.guided_condition(self.bundle.config, self.cond, None, 1.5)
    record = inverse.block_iterations(self.bundle.config, self.bundle.params, z_tok[:, :2],
                                      TokenGrid(2, grid.height, grid.width), deep_cond, guidance,
                                      JacobiOptions(block_size=4, threshold=1e-3))
    n = grid.tokens_per_frame
    schedule = jacobi.block_schedule(0, 2 * n, n, JacobiOptions(block_size=4))
    first = sum(a < n for a, _ in schedule)  # the first frame's blocks
    sizes = [m for _, m in schedule]
    parts = {"deep_first": (record[0][:first], sizes[:first]), "deep": (record[0][first:], sizes[first:])}
    parts.update({f"shallow_{i}": (r, [4] * (n // 4)) for i, r in zip((1, 0), record[1:])})  # frame-local
    per_token = {name: float(np.sum(its)) / sum(sizes) for name, (its, sizes) in parts.items()}
    if max(per_token.values()) > min(per_token.values()):
      cost = 0.9 / np.sqrt(max(per_token.values()) * min(per_token.values()))  # between two break-evens
      mixed, out = self.sample("auto", cost=cost)
      self.assertEqual(set(mixed.plan.values()), {"jacobi", "sequential"}, (per_token, mixed.plan))
      for name, (its, sizes) in parts.items():
        self.assertEqual(jacobi.pays_off(its, sizes, cost), mixed.plan[name] == "jacobi", (name, per_token))
      np.testing.assert_allclose(out, seq_out, atol=0.5)  # each block by its own method, tau 1e-3

  def test_measured_iteration_costs(self):
    # Without options.iteration_cost the plan uses the measured cost of each block size.
    sampler, out = self.sample("auto")
    self.assertEqual(set(sampler.plan), {"deep_first", "deep", "shallow_0", "shallow_1"})
    self.assertEqual(out.shape, self.z.shape)
    from starflow_jax import inverse, model as model_lib, step_cost, tokens
    from starflow_jax.rope import TokenGrid
    cfg = self.bundle.config
    z_tok, grid = tokens.patchify(self.z, cfg.patch_size)
    deep_cond, guidance = inverse.guided_condition(cfg, self.cond, None, 1.5)
    z_deep = z_tok[:, :2].reshape(2, -1, z_tok.shape[-1])  # [B, 2N, D]
    costs = step_cost.iteration_costs(model_lib.deep_block(cfg), model_lib.deep_params(self.bundle.params), z_deep,
                                      TokenGrid(2, grid.height, grid.width), deep_cond, guidance, [4, 12, 4],
                                      JacobiOptions(block_size=4))
    self.assertEqual(sorted(costs), [4, 12])
    for m, c in costs.items():  # a pass on m tokens: more than nothing, and less than m passes on one
      self.assertBetween(c, 0.05, 4.0 * m)

  def test_bad_auto_options(self):
    from starflow_jax.errors import UserError
    with self.assertRaisesRegex(UserError, "iteration_cost"):
      SamplingOptions(method="auto", iteration_cost=0.0).validate()
    with self.assertRaisesRegex(UserError, "reference-compatible"):
      SamplingOptions(method="auto", jacobi=JacobiOptions(reference_compatible=True)).validate()


class OneInverseTest(absltest.TestCase):
  """The sampler schedules the pieces `inverse.invert` composes: on the same model, noise and
  condition the two give the same latents. Bit for bit where both run the same programs on the
  same shapes (whole-clip shallow blocks); where the sampler pipelines frame-local shallow blocks
  one frame at a time (batch B instead of B*T), within the sequential decoder's batch-size
  rounding (4e-6 of the largest value, as in test_jacobi)."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.bundle, cls.cond = helpers.golden_video_bundle()
    cls.z = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 4, 4, 4))
    cls.null = jnp.full_like(cls.cond, 0.1)  # a null condition that is not the default (zeros)

  def _assert_sampler_equals_invert(self, bundle, cond, null, options: SamplingOptions, z, prefix=None):
    sampler = VideoSampler(bundle, dataclasses.replace(options, denoise="none", progress=False))
    block_inverse = inverse.block_inverse_for(sampler.jacobi_options)
    invert = jax.jit(lambda p, z, c, n, x: inverse.invert(bundle.config,
                                                          p,
                                                          z,
                                                          c,
                                                          guidance=options.guidance,
                                                          null_cond=n,
                                                          block_inverse=block_inverse,
                                                          prefix=x,
                                                          guide_top=options.guide_top is not None,
                                                          attn_temp=options.attn_temp))
    want = invert(bundle.params, z, cond, null, prefix)
    got = sampler.sample_latents(z, cond, null, prefix)
    pipelined = bundle.config.shallow_block_local and not (sampler.jacobi_options is not None and
                                                           sampler.jacobi_options.reference_compatible)
    if pipelined:
      np.testing.assert_allclose(got, want, rtol=0, atol=4e-6 * float(jnp.abs(want).max()))
    else:
      np.testing.assert_array_equal(got, want)
    return want

  def test_golden_video_model(self):
    jacobi_ours = JacobiOptions(block_size=4, threshold=0.0, max_iter=16)  # pipelined shallow blocks
    jacobi_official = JacobiOptions(block_size=4, reference_compatible=True)  # whole-clip shallow blocks
    for options, with_prefix in (
        (SamplingOptions(method="sequential", guidance=1.5), True),  # T2V, CFG, I2V
        (SamplingOptions(method="jacobi", guidance=1.5, jacobi=jacobi_ours), False),
        (SamplingOptions(method="jacobi", guidance=1.5, jacobi=jacobi_official), False)):
      with self.subTest(method=options.method, jacobi=options.jacobi):
        full = self._assert_sampler_equals_invert(self.bundle, self.cond, self.null, options, self.z)
        if with_prefix:  # image-to-video: the first frame given
          continued = self._assert_sampler_equals_invert(self.bundle,
                                                         self.cond,
                                                         self.null,
                                                         options,
                                                         self.z,
                                                         prefix=full[:, :1])
          np.testing.assert_array_equal(continued[:, :1], full[:, :1])

  def test_return_sequence_gives_every_stage(self):
    """[z, after the deep block, after each shallow block]: the last is the sample, bit for bit,
    on the pipelined (frame-by-frame) and the whole-clip schedules."""
    for jacobi in (JacobiOptions(block_size=4, threshold=0.0,
                                 max_iter=16), JacobiOptions(block_size=4, reference_compatible=True)):
      sampler = VideoSampler(self.bundle, SamplingOptions(guidance=1.5, jacobi=jacobi, denoise="none", progress=False))
      stages = sampler.sample_latents(self.z, self.cond, self.null, return_sequence=True)
      self.assertLen(stages, self.bundle.config.num_blocks + 1)
      np.testing.assert_array_equal(stages[0], self.z)
      np.testing.assert_array_equal(stages[-1], sampler.sample_latents(self.z, self.cond, self.null))
      self.assertGreater(float(jnp.abs(stages[1] - stages[-1]).max()), 1e-3)
      videos = sampler.generate(None, 3, cond=self.cond, null_cond=self.null, batch_size=2, return_sequence=True)
      self.assertLen(videos, len(stages))

  def test_the_model_directory_keeps_its_null_condition(self):
    """A model trained against a null that is not zeros (pre-encoded T5 text: the empty prompt's
    embedding) stores it; guidance without an explicit null then uses it, not zeros."""
    null = np.asarray(jax.random.normal(jax.random.PRNGKey(5), self.cond.shape[1:]))  # [L, txt_dim]
    directory = os.path.join(self.create_tempdir().full_path, "model")
    checkpoint.save_model(directory, self.bundle.config, self.bundle.params, null_condition=null)
    bundle = checkpoint.load_bundle(directory)
    np.testing.assert_array_equal(bundle.null_condition, null)
    self.assertIsNone(checkpoint.load_bundle(self._plain_directory()).null_condition)
    sampler = VideoSampler(bundle, SamplingOptions(method="sequential", guidance=1.5, denoise="none", progress=False))
    explicit = jnp.broadcast_to(null, self.cond.shape)
    np.testing.assert_array_equal(sampler.sample_latents(self.z, self.cond, None),
                                  sampler.sample_latents(self.z, self.cond, explicit))
    zeros = sampler.sample_latents(self.z, self.cond, jnp.zeros_like(self.cond))
    self.assertGreater(float(jnp.abs(zeros - sampler.sample_latents(self.z, self.cond, None)).max()), 1e-3)

  def _plain_directory(self) -> str:
    directory = os.path.join(self.create_tempdir().full_path, "plain")
    return checkpoint.save_model(directory, self.bundle.config, self.bundle.params)

  def test_conditioned_shallow_blocks_are_guided_as_officially(self):
    """cond_top_only=False: every block sees the text, and with guidance every block, shallow
    ones included, decodes [cond; null] with the guided affine parameters (official sample.py)."""
    config = helpers.tiny_video_config(cond_top_only=False, shallow_block_local=False)
    params = helpers.random_params(config, std=0.1)
    bundle = ModelBundle(config, params)
    cond = helpers.random_condition(config, 2)
    null = helpers.random_condition(config, 2, seed=7)
    z = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 4, 4, 2))
    got = self._assert_sampler_equals_invert(bundle, cond, null, SamplingOptions(method="sequential", guidance=2.0), z)

    @jax.jit
    def official_rule(params, z, cond, null):
      z_tok, grid = tokens.patchify(z, config.patch_size)
      b, t, n, d = z_tok.shape
      both = jnp.concatenate([cond, null])
      h = decoding.sequential_inverse(model_lib.deep_block(config), model_lib.deep_params(params),
                                      z_tok.reshape(b, t * n, d), grid, both, 2.0)
      for i in reversed(range(config.num_blocks - 1)):
        h = decoding.sequential_inverse(model_lib.shallow_block(config, i), model_lib.shallow_params(params, i), h,
                                        grid, both, 2.0)
      return tokens.unpatchify(h.reshape(b, t, n, d), grid, config.patch_size)

    np.testing.assert_array_equal(got, official_rule(params, z, cond, null))
    # ... and the shallow guidance matters here: unguided shallow blocks give another video.
    deep = model_lib.deep_block(config)

    def guide_deep_block_only(block, params, z, grid, cond, guidance, given=None):
      if block == deep:
        return decoding.sequential_inverse(block, params, z, grid, cond, guidance, given)
      return decoding.sequential_inverse(block, params, z, grid, cond[:z.shape[0]], 0.0, given)

    unguided = inverse.invert(config,
                              params,
                              z,
                              cond,
                              guidance=2.0,
                              null_cond=null,
                              block_inverse=guide_deep_block_only)
    self.assertGreater(float(jnp.abs(unguided - got).max()), 1e-3)

    # guide_top (any value, as officially): the deep block guided, the shallow blocks not.
    top = self._assert_sampler_equals_invert(bundle, cond, null,
                                             SamplingOptions(method="sequential", guidance=2.0, guide_top=1), z)
    # (`unguided` ran op by op, the sampler compiled: equal to float32 rounding, as in test_jacobi)
    np.testing.assert_allclose(top, unguided, rtol=0, atol=4e-6 * float(jnp.abs(unguided).max()))
    self.assertGreater(float(jnp.abs(top - got).max()), 1e-3)

  def test_frame_local_shallow_blocks_read_each_frames_condition(self):
    """cond_top_only=False with frame-local shallow blocks: the frame-by-frame sampler (each
    frame's shallow inverses as soon as the deep block has it, its clip's condition per frame,
    guided) is the model's inverse (`inverse.invert`), sequential and Jacobi (guide_top goes
    through the same `inverse.shallow_condition`, tested above)."""
    config = helpers.tiny_video_config(cond_top_only=False)
    bundle = ModelBundle(config, helpers.random_params(config, std=0.1))
    cond = helpers.random_condition(config, 2)
    null = helpers.random_condition(config, 2, seed=7)
    z = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 4, 4, 2))
    jacobi = JacobiOptions(block_size=4, threshold=0.0, max_iter=16)
    for options in (SamplingOptions(method="sequential",
                                    guidance=2.0), SamplingOptions(method="jacobi", guidance=2.0, jacobi=jacobi)):
      with self.subTest(method=options.method):
        self._assert_sampler_equals_invert(bundle, cond, null, options, z)
    # Unguided, the sampler inverts the forward map, which reads the condition in every frame.
    x = self._assert_sampler_equals_invert(bundle, cond, null, SamplingOptions(method="sequential"), z)
    np.testing.assert_allclose(model_lib.forward(config, bundle.params, x, cond).z, z, atol=1e-4)
    self.assertGreater(float(jnp.abs(model_lib.forward(config, bundle.params, x, cond[::-1]).z - z).max()), 1e-2)

  def test_attention_temperature_is_the_inverse_s(self):
    """attn_temp: the sampler's inversion and `inverse.invert` at the same temperature agree
    (sequential and Jacobi, with a prefix), and the temperature changes the video."""
    jacobi = JacobiOptions(block_size=4, threshold=0.0, max_iter=16)
    for options in (SamplingOptions(method="sequential", guidance=1.5, attn_temp=0.8),
                    SamplingOptions(method="jacobi", guidance=1.5, attn_temp=0.8, jacobi=jacobi)):
      with self.subTest(method=options.method):
        hot = self._assert_sampler_equals_invert(self.bundle, self.cond, self.null, options, self.z)
        cold = self._assert_sampler_equals_invert(self.bundle, self.cond, self.null,
                                                  dataclasses.replace(options, attn_temp=1.0), self.z)
        self.assertGreater(float(jnp.abs(hot - cold).max()), 1e-3)
    self._assert_sampler_equals_invert(self.bundle,
                                       self.cond,
                                       self.null,
                                       SamplingOptions(method="sequential", guidance=1.5, attn_temp=0.8),
                                       self.z,
                                       prefix=cold[:, :1])


class OptionsFromDefaultsTest(absltest.TestCase):

  def test_model_defaults_with_overrides_on_top(self):
    from starflow_jax.sampling import options_from_defaults
    defaults = {
        "method": "sequential",
        "guidance": 3.0,
        "jacobi_block_size": 16,
        "jacobi_threshold": 1e-4,
        "noise_std": 0.3,
        "num_frames": 9,
        "latent_frames": 3
    }
    options = options_from_defaults(defaults, guidance=None, jacobi_max_iter=7, context=2, progress=False)
    self.assertEqual((options.method, options.guidance, options.noise_std), ("sequential", 3.0, 0.3))
    self.assertEqual((options.jacobi.block_size, options.jacobi.threshold, options.jacobi.max_iter), (16, 1e-4, 7))
    self.assertEqual((options.window, options.context, options.progress), (3, 2, False))  # latent frames
    self.assertEqual(options_from_defaults(defaults, method="jacobi", window=5).method, "jacobi")
    self.assertEqual(options_from_defaults({"num_frames": 4}).window, 4)  # pixel-space model directories
    with self.assertRaises(TypeError):
      options_from_defaults(defaults, not_an_option=1)

  def test_options_survive_the_model_directory(self):
    """Every option a model directory records reads back as it was written."""
    from starflow_jax.sampling import defaults_from_options, options_from_defaults
    from starflow_jax.text.prompts import PromptTemplate
    options = SamplingOptions(method="sequential",
                              guidance=3.5,
                              jacobi=JacobiOptions(block_size=32, threshold=1e-3, max_iter=20),
                              denoise="learned",
                              denoise_step=0.3,
                              noise_std=0.5,
                              window=21,
                              context=16,
                              temperature=0.9,
                              fps=16,
                              aspect_ratio="16:9",
                              prompt_template=PromptTemplate(fps=True, noise_level=True, aspect_ratio=True),
                              attn_temp=0.8,
                              guide_top=1).validate()
    back = options_from_defaults(defaults_from_options(options, 81, 21))
    self.assertEqual(back, options)
    self.assertEqual(options_from_defaults(defaults_from_options(SamplingOptions(), 1, 1), window=None),
                     dataclasses.replace(SamplingOptions(), window=1))

  def test_the_experiments_options_round_trip_through_the_model_directory(self):
    """What training samples with is what the exported model directory recommends."""
    from starflow_jax import experiment
    from starflow_jax.sampling import options_from_defaults
    config = tiny_video.get_config("micro")
    config.sample.update(method="jacobi",
                         guidance=2.5,
                         denoise="learned",
                         denoise_step=0.3,
                         jacobi_block_size=8,
                         jacobi_threshold=2e-3,
                         jacobi_max_iter=9)
    exp = experiment.Experiment.from_config(config)
    defaults = exp.sampling_defaults()
    self.assertEqual((defaults["num_frames"], defaults["latent_frames"]), (3, 3))
    read_back = options_from_defaults(defaults, progress=False)
    self.assertEqual(dataclasses.replace(read_back, window=None), exp.sampling)
    self.assertEqual(read_back.window, 3)


if __name__ == "__main__":
  absltest.main()
