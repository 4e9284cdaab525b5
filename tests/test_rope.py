"""Rotary position tables: the official 2D / 3D layouts, rotations that keep norms."""

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from starflow_jax import rope


class RopeTest(absltest.TestCase):

  def test_3d_layout(self):
    grid = rope.TokenGrid(2, 2, 2)
    pos = rope.rope_positions(grid, cond_len=4, pt_seq_len=2, layout="3d")
    self.assertEqual(pos.shape, (4 + 8, 3))
    np.testing.assert_allclose(pos[:4, 2], [0, 0.5, 1.0, 1.5])  # k / L * pt_seq_len
    np.testing.assert_allclose(pos[:4, :2], 0)
    np.testing.assert_allclose(pos[4:8, 2], 0)
    np.testing.assert_allclose(pos[8:, 2], 1)
    np.testing.assert_allclose(pos[4:8, 0], [0, 0, 1, 1])  # rows at the training grid are integers
    freqs = rope.rope_frequencies(64, "3d")
    self.assertEqual([len(f) for f in freqs], [12, 12, 8])
    self.assertEqual([len(f) for f in rope.rope_frequencies(64, "2d")], [16, 16])
    cos, sin = rope.rope_table(grid, 4, 2, 64, "3d")
    self.assertEqual(cos.shape, (12, 64))
    np.testing.assert_allclose(cos[:, 0], cos[:, 1])  # one angle per interleaved pair

  def test_rotation_preserves_norm_and_relative_positions(self):
    grid = rope.TokenGrid(1, 4, 4)
    cos, sin = rope.rope_table(grid, 0, 4, 32, "2d")
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 16, 1, 32))
    y = rope.apply_rope(x, jnp.asarray(cos), jnp.asarray(sin))
    np.testing.assert_allclose(jnp.linalg.norm(y, axis=-1), jnp.linalg.norm(x, axis=-1), rtol=1e-5)
    with self.assertRaisesRegex(ValueError, "2D RoPE covers one frame"):
      rope.rope_positions(rope.TokenGrid(2, 2, 2), 0, 2, "2d")

  def test_scores_depend_only_on_relative_positions(self):
    """q(i) . k(j) after RoPE depends on i - j only (1D slice of the 2D table: one row)."""
    grid = rope.TokenGrid(1, 1, 8)
    cos, sin = (jnp.asarray(t) for t in rope.rope_table(grid, 0, 8, 32, "2d"))
    q = jnp.broadcast_to(jax.random.normal(jax.random.PRNGKey(1), (32,)), (1, 8, 1, 32))
    k = jnp.broadcast_to(jax.random.normal(jax.random.PRNGKey(2), (32,)), (1, 8, 1, 32))
    scores = jnp.einsum("bqhd,bkhd->qk", rope.apply_rope(q, cos, sin), rope.apply_rope(k, cos, sin))
    for offset in (0, 1, 3):
      diagonal = np.diagonal(np.asarray(scores), offset)
      np.testing.assert_allclose(diagonal, diagonal[0], rtol=1e-4, atol=1e-4)


if __name__ == "__main__":
  absltest.main()
