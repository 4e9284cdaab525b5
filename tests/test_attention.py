"""Block-wise (flash) attention equals dense attention, its gradients too, on every mask the
model uses; the model gives the same outputs with it; its memory grows with the sequence, not
with its square."""

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from starflow_jax import attention, layers
from starflow_jax.denoiser import FrameBlockMask
from starflow_jax.model import StarFlow
from tests import helpers

MASKS = {
    "none": None,
    "causal": attention.CausalMask(),
    "frames": FrameBlockMask(cond_len=3, tokens_per_frame=5, lookahead=2, window=1),
}


def _qkv(num_q, num_k, heads=3, dim=16, seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), 3)
  return (jax.random.normal(keys[0], (2, num_q, heads, dim)), jax.random.normal(keys[1], (2, num_k, heads, dim)),
          jax.random.normal(keys[2], (2, num_k, heads, dim)))


class BlockwiseAttentionTest(parameterized.TestCase):

  @parameterized.product(mask=("none", "causal", "frames"), blocks=((8, 8), (16, 4), (64, 64)))
  def test_equals_dense_attention_and_its_gradients(self, mask, blocks):
    mask = MASKS[mask]
    num_q, num_k = 33, 33  # not a multiple of the blocks: padded tiles
    q, k, v = _qkv(num_q, num_k)
    dense_mask = None if mask is None else mask.dense(num_q, num_k)
    dense = lambda q, k, v: layers.attend(q, k, v, dense_mask)
    tiled = lambda q, k, v: attention.blockwise_attention(q, k, v, mask, *blocks)
    np.testing.assert_allclose(jax.jit(tiled)(q, k, v), dense(q, k, v), rtol=0, atol=2e-6)
    cotangent = jax.random.normal(jax.random.PRNGKey(7), q.shape)
    grads = [
        jax.jit(jax.grad(lambda *x, f=f: jnp.sum(f(*x) * cotangent), argnums=(0, 1, 2)))(q, k, v)
        for f in (tiled, dense)
    ]
    for got, want, name in zip(*grads, "qkv"):
      np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(np.abs(want).max()), err_msg=name)

  def test_causal_prefix_with_fewer_queries_than_keys(self):
    q, k, v = _qkv(12, 29)
    mask = attention.CausalMask()
    np.testing.assert_allclose(attention.blockwise_attention(q, k, v, mask, 8, 8),
                               layers.attend(q, k, v, mask.dense(12, 29)),
                               rtol=0,
                               atol=2e-6)

  def test_tiles_the_mask_leaves_empty_are_skipped(self):
    tiles = attention._nonempty_tiles(attention.CausalMask(), 64, 64, 16, 16)
    np.testing.assert_array_equal(tiles, np.tril(np.ones((4, 4), bool)))  # 6 of 16 skipped
    frames = attention._nonempty_tiles(FrameBlockMask(0, 16, 1, 0), 64, 64, 16, 16)
    np.testing.assert_array_equal(frames, np.eye(4, dtype=bool))  # each frame sees itself only

  def test_memory_grows_with_the_sequence_not_its_square(self):
    """XLA's compiled memory of the attention gradient: dense holds [H, L, L] logits, tiles do not."""

    def temporaries(fn, length):
      q, k, v = (jax.ShapeDtypeStruct((1, length, 4, 16), jnp.float32) for _ in range(3))
      grad = jax.jit(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v)), argnums=(0, 1, 2)))
      return grad.lower(q, k, v).compile().memory_analysis().temp_size_in_bytes

    mask = attention.CausalMask()
    dense = lambda q, k, v: layers.attend(q, k, v, mask.dense(q.shape[1], k.shape[1]))
    tiled = lambda q, k, v: attention.blockwise_attention(q, k, v, mask, 128, 128)
    length = 2048
    logits = 4 * length * length * 4  # one float32 [H, L, L]
    self.assertGreater(temporaries(dense, length), logits)
    self.assertLess(temporaries(tiled, length), logits / 8)


class ModelWithBlockwiseAttentionTest(absltest.TestCase):

  def test_flow_and_denoiser_outputs_and_gradients_unchanged(self):
    """Deep block over 3 frames x 4 tokens + 3 text tokens, the denoiser's frame blocks: tiles of 4."""
    dense_config = helpers.tiny_video_config()
    tiled_config = helpers.tiny_video_config(attention_block_size=4)
    params = helpers.random_params(dense_config, std=0.1)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 4, 4, 2))
    cond = helpers.random_condition(dense_config, 2)

    def loss(config, params):
      model = StarFlow(config)
      out = model.apply({"params": params}, x, cond)
      den = model.apply({"params": params}, x, cond, method=StarFlow.denoise)
      return jnp.sum(out.z**2) - jnp.sum(jnp.stack([jnp.sum(l) for l in out.logdets])) + jnp.sum(den**2), (out, den)

    results = [
        jax.jit(jax.value_and_grad(lambda p, c=c: loss(c, p), has_aux=True))(params)
        for c in (tiled_config, dense_config)
    ]
    (_, (out_t, den_t)), grads_t = results[0]
    (_, (out_d, den_d)), grads_d = results[1]
    np.testing.assert_allclose(out_t.z, out_d.z, rtol=0, atol=1e-5 * float(np.abs(out_d.z).max()))
    np.testing.assert_allclose(den_t, den_d, rtol=0, atol=1e-5 * float(np.abs(den_d).max()) + 1e-7)
    from tests.test_train import assert_gradients_close
    assert_gradients_close(self, grads_t, grads_d, rtol=2e-5)


if __name__ == "__main__":
  absltest.main()
