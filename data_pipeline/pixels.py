"""Pixels as the flow sees them: uint8 -> [-1, 1) with optional dequantisation noise."""

import jax
import jax.numpy as jnp

Array = jnp.ndarray


def pixels_to_unit(pixels: Array, rng: Array | None) -> Array:
  """uint8 pixels k -> (k + u) / 128 - 1 in [-1, 1) with u ~ U[0, 1) (dequantisation) or u = 1/2.

  This is the scaling bits_per_dim assumes (2^(n-1) bins per unit)."""
  k = pixels.astype(jnp.float32)
  u = jax.random.uniform(rng, pixels.shape) if rng is not None else 0.5
  return (k + u) / 128.0 - 1.0
