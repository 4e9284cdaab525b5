"""The pieces every inverse is made of (decoding.py, jacobi spans): prefilling given tokens,
decoding spans, re-encoding a window, and the schedule of spans."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from starflow_jax import decoding, jacobi, model as model_lib, tokens
from starflow_jax.flow import FlowBlock
from starflow_jax.jacobi import JacobiOptions
from starflow_jax.rope import TokenGrid
from tests import helpers


class PiecesTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.config = helpers.tiny_video_config()
    params = helpers.random_params(cls.config, std=0.1)
    cls.block = model_lib.deep_block(cls.config)
    cls.params = model_lib.deep_params(params)
    cls.grid = TokenGrid(3, 2, 2)  # 3 frames of N = 4 tokens
    cls.z = jax.random.normal(jax.random.PRNGKey(0), (2, 12, cls.config.token_dim))
    cls.cond = helpers.random_condition(cls.config, 2)
    cls.sequential = staticmethod(
        jax.jit(lambda z, c, given: decoding.sequential_inverse(cls.block, cls.params, z, cls.grid, c, 0.0, given)))

  def test_the_forward_of_the_inverse_is_the_noise(self):
    x = self.sequential(self.z, self.cond, None)
    z, _ = self.block.apply({"params": self.params}, x, self.grid, self.cond)
    np.testing.assert_allclose(z, self.z, atol=1e-4)

  def test_given_tokens_are_kept_and_the_rest_continues_them(self):
    full = self.sequential(self.z, self.cond, None)
    continued = self.sequential(self.z, self.cond, full[:, :4])  # frame 0 given
    np.testing.assert_array_equal(continued[:, :4], full[:, :4])
    # Prefilling runs frame 0 through the block in one batched pass, decoding ran it token by
    # token: K/V agree to float32 rounding (the decoder's 4e-6 of the largest value, test_jacobi).
    np.testing.assert_allclose(continued, full, rtol=0, atol=4e-6 * float(np.abs(full).max()))

  def test_spans_in_any_split_equal_one_span(self):
    """Decoding [0, 12) as one span or as the scheduler's per-frame calls is the same program
    per token: bit-equal; Jacobi spans at tau = 0 give the sequential tokens."""
    block, params, grid = self.block, self.params, self.grid

    @functools.partial(jax.jit, static_argnums=(2, 3))
    def run(z, cond, options, per_frame):
      state, z_perm, first, cond_len = decoding.begin_block(block, params, z, grid, cond, 0.0, None)
      for start, size, count in jacobi.span_calls(first, z.shape[1], grid.tokens_per_frame, options, per_frame):
        state, _ = jacobi.decode_span(block, params, state, z_perm, jnp.int32(start), size, count, grid, cond_len, 0.0,
                                      options)
      return decoding.end_block(block, state, z.shape[0], grid)

    one = run(self.z, self.cond, None, False)
    np.testing.assert_array_equal(run(self.z, self.cond, None, True), one)
    np.testing.assert_array_equal(one, self.sequential(self.z, self.cond, None))
    exact = JacobiOptions(block_size=2, threshold=0.0, max_iter=8)
    np.testing.assert_allclose(run(self.z, self.cond, exact, True), one, rtol=0,
                               atol=4e-6 * float(np.abs(one).max()))  # as in test_jacobi

  def test_span_schedule(self):
    self.assertEqual(jacobi.span_calls(2, 10, 4, None), [(2, 1, 8)])
    self.assertEqual(jacobi.span_calls(2, 10, 4, None, per_frame=True), [(2, 1, 2), (4, 1, 4), (8, 1, 2)])
    options = JacobiOptions(block_size=2)  # size 2 while a <= N = 4, then 8
    self.assertEqual(jacobi.span_calls(0, 12, 4, options), [(0, 2, 3), (6, 6, 1)])
    self.assertEqual(jacobi.span_calls(0, 12, 4, options, per_frame=True), [(0, 2, 2), (4, 2, 1), (6, 6, 1)])
    self.assertEqual(jacobi.span_calls(5, 5, 4, options), [])

  def test_reencoding_the_whole_context_reproduces_the_cache(self):
    """After tokens [0, 8) are decoded, a window re-based on all 8 (offset 0) holds the cache the
    decoder built itself: the next frame decodes identically."""
    block, params, grid = self.block, self.params, self.grid

    @functools.partial(jax.jit, static_argnums=(2,))
    def next_frame(z, cond, reencode):
      state, z_perm, _, cond_len = decoding.begin_block(block, params, z, grid, cond, 0.0, None)
      state = decoding.decode_tokens(block, params, state, z_perm, 0, 8, grid, cond_len, 0.0)
      if reencode:
        state = decoding.reencode_context(block, params, state, cond, jnp.int32(8), 8, grid, cond_len)
      state = decoding.decode_tokens(block, params, state, z_perm, 8, 4, grid, cond_len, 0.0)
      return decoding.end_block(block, state, z.shape[0], grid)

    reference = next_frame(self.z, self.cond, False)
    np.testing.assert_allclose(next_frame(self.z, self.cond, True),
                               reference,
                               rtol=0,
                               atol=4e-6 * float(np.abs(reference).max()))  # batched vs per-token K/V

  def test_start_holds_the_condition_prefix(self):
    state = decoding.start_decoding(self.block,
                                    self.params,
                                    tokens.permute(self.z, self.block.order, 4),
                                    self.grid,
                                    self.cond,
                                    guided=False)
    cond_len = decoding.call_block(self.block, self.params, FlowBlock.cond_len, self.cond)
    self.assertEqual(cond_len, self.config.txt_size)
    self.assertEqual(state.buffer.shape, (2, 13, self.config.token_dim))  # [sos, z]
    self.assertGreater(float(jnp.abs(state.cache[0]["k"][:, :cond_len]).max()), 0.0)
    np.testing.assert_array_equal(state.cache[0]["k"][:, cond_len:], 0.0)


if __name__ == "__main__":
  absltest.main()
