"""Layers: exact GELU, norms, and attention with an explicit KV cache."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from starflow_jax import attention, layers, rope


class GeluTest(absltest.TestCase):

  def test_exact_gelu_is_x_times_normal_cdf(self):
    """The MLP's erf-form GELU is PyTorch's exact GELU, x Phi(x), to float32 rounding, and has
    the same gradient as jax.nn.gelu(approximate=False)."""
    x = np.linspace(-12.0, 12.0, 4801, dtype=np.float32)
    reference = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.astype(np.float64)])
    np.testing.assert_allclose(layers.gelu_exact(jnp.asarray(x)), reference, atol=2e-6, rtol=1e-6)
    np.testing.assert_allclose(layers.gelu_exact(jnp.asarray(x)), jax.nn.gelu(x, approximate=False), atol=2e-6)
    grad = jax.vmap(jax.grad(layers.gelu_exact))(jnp.asarray(x))
    grad_ref = jax.vmap(jax.grad(lambda v: jax.nn.gelu(v, approximate=False)))(jnp.asarray(x))
    np.testing.assert_allclose(grad, grad_ref, atol=2e-6)
    self.assertEqual(layers.gelu_exact(jnp.ones((2,), jnp.bfloat16)).dtype, jnp.bfloat16)


class NormTest(absltest.TestCase):

  def test_fresh_rms_norm_is_the_plain_rms_normalisation(self):
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 16)) * 5.0
    norm = layers.RMSNorm()
    y = norm.apply(norm.init(jax.random.PRNGKey(1), x), x)
    np.testing.assert_allclose(y,
                               x / np.sqrt(np.mean(np.square(x), -1, keepdims=True) + layers.RMS_NORM_EPS),
                               rtol=1e-5)

  def test_layer_norm_has_pytorch_epsilon(self):
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 16)) + 100.0  # a large mean: two-pass variance
    norm = layers.make_norm("layer_norm", "n")
    y = norm.apply(norm.init(jax.random.PRNGKey(1), x), x)
    xc = np.asarray(x, np.float64) - np.mean(np.asarray(x, np.float64), -1, keepdims=True)
    np.testing.assert_allclose(y, xc / np.sqrt(np.mean(xc**2, -1, keepdims=True) + 1e-5), atol=1e-4)


class CachedAttentionTest(absltest.TestCase):

  def test_token_by_token_with_a_cache_equals_causal_attention(self):
    """Writing K/V one token at a time and attending to the cache gives the causal full pass."""
    m, width, heads, head_dim = 6, 32, 2, 16
    attn = layers.Attention(heads, head_dim)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, m, width))
    cos, sin = (jnp.asarray(t) for t in rope.rope_table(rope.TokenGrid(1, 1, m), 0, m, head_dim, "2d"))
    params = attn.init(jax.random.PRNGKey(1), x, cos, sin, attention.CausalMask())
    full, _ = attn.apply(params, x, cos, sin, attention.CausalMask())
    cache = {"k": jnp.zeros((2, m, heads, head_dim)), "v": jnp.zeros((2, m, heads, head_dim))}
    steps = []
    for i in range(m):
      y, cache = attn.apply(params, x[:, i:i + 1], cos[i:i + 1], sin[i:i + 1], None, cache, i)
      steps.append(y)
    np.testing.assert_allclose(jnp.concatenate(steps, 1), full, atol=1e-5)

  def test_attention_temperature_divides_the_logits(self):
    """Under attention_temperature(t) the logits are q k^T / (sqrt(d) t): the same as the query
    projection scaled by 1/t (RoPE is linear); it applies only inside the context."""
    m, width, heads, head_dim, t = 5, 32, 2, 16, 0.7
    attn = layers.Attention(heads, head_dim)
    x = 30.0 * jax.random.normal(jax.random.PRNGKey(0), (2, m, width))  # logits of order 1 at init
    cos, sin = (jnp.asarray(v) for v in rope.rope_table(rope.TokenGrid(1, 1, m), 0, m, head_dim, "2d"))
    params = nn.unbox(attn.init(jax.random.PRNGKey(1), x, cos, sin, attention.CausalMask()))
    qkv = params["params"]["qkv"]
    scaled = {"kernel": qkv["kernel"].at[:, 0].multiply(1 / t), "bias": qkv["bias"].at[0].multiply(1 / t)}
    cooler = {"params": {**params["params"], "qkv": scaled}}
    plain, _ = attn.apply(params, x, cos, sin, attention.CausalMask())
    with layers.attention_temperature(t):
      hot, _ = attn.apply(params, x, cos, sin, attention.CausalMask())
    with layers.attention_temperature(1.0):
      same, _ = attn.apply(params, x, cos, sin, attention.CausalMask())
    np.testing.assert_allclose(hot, attn.apply(cooler, x, cos, sin, attention.CausalMask())[0], atol=1e-5)
    self.assertGreater(float(jnp.abs(hot - plain).max()), 1e-3)
    np.testing.assert_array_equal(same, plain)
    np.testing.assert_array_equal(attn.apply(params, x, cos, sin, attention.CausalMask())[0], plain)  # reset

  def test_attend_masks_exactly(self):
    """A masked-out key has no influence at all (its value may be anything)."""
    q, k, v = (jax.random.normal(jax.random.PRNGKey(i), (1, 3, 1, 4)) for i in range(3))
    mask = layers.causal_mask(3, 3)
    out = layers.attend(q, k, v, mask)
    changed = layers.attend(q, k, v.at[:, 2].set(1e6), mask)
    np.testing.assert_array_equal(out[:, :2], changed[:, :2])
    self.assertFalse(np.allclose(out[:, 2], changed[:, 2]))
    self.assertTrue(math.isfinite(float(jnp.sum(out))))


if __name__ == "__main__":
  absltest.main()
