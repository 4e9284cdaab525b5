"""Image-quality measures for videos in [-1, 1]: PSNR, SSIM and a high-frequency energy statistic."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jnp.ndarray


def psnr(x: Array, reference: Array) -> Array:
  """Peak signal-to-noise ratio in dB per clip, for values in [-1, 1] (peak-to-peak 2)."""
  mse = jnp.mean(jnp.square(x - reference), axis=tuple(range(1, x.ndim)))
  return 10.0 * jnp.log10(4.0 / jnp.maximum(mse, 1e-12))


def _gaussian_window(size: int, sigma: float) -> np.ndarray:
  ax = np.arange(size) - (size - 1) / 2
  g = np.exp(-(ax**2) / (2 * sigma**2))
  return (g / g.sum()).astype(np.float32)


def ssim(x: Array, reference: Array, window: int = 7, sigma: float = 1.5) -> Array:
  """Structural similarity (Wang et al. 2004) per clip: Gaussian window, constants for data range 2,
  averaged over frames, pixels and channels. x, reference: [B, T, H, W, C] or [B, H, W, C]."""
  if x.ndim == 4:
    x, reference = x[:, None], reference[:, None]
  b, t, h, w, c = x.shape
  window = min(window, h, w)
  g = jnp.asarray(_gaussian_window(window, sigma))
  kernel = jnp.outer(g, g)[:, :, None, None]  # [k, k, 1, 1]

  def blur(img):  # [N, H, W] -> valid-mode Gaussian filter
    return jax.lax.conv_general_dilated(img[..., None],
                                        kernel, (1, 1),
                                        "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))[..., 0]

  to_planes = lambda v: v.transpose(0, 1, 4, 2, 3).reshape(b * t * c, h, w)
  p, q = to_planes(x.astype(jnp.float32)), to_planes(reference.astype(jnp.float32))
  c1, c2 = (0.01 * 2.0)**2, (0.03 * 2.0)**2
  mu_p, mu_q = blur(p), blur(q)
  var_p = blur(p * p) - mu_p**2
  var_q = blur(q * q) - mu_q**2
  cov = blur(p * q) - mu_p * mu_q
  ssim_map = ((2 * mu_p * mu_q + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_q**2 + c1) * (var_p + var_q + c2))
  return jnp.mean(ssim_map.reshape(b, -1), axis=1)


def high_frequency_energy(x: Array) -> Array:
  """Mean absolute 4-neighbour Laplacian per clip: rises with pixel noise, falls with blur."""
  if x.ndim == 4:
    x = x[:, None]
  lap = (4 * x[:, :, 1:-1, 1:-1] - x[:, :, :-2, 1:-1] - x[:, :, 2:, 1:-1] - x[:, :, 1:-1, :-2] - x[:, :, 1:-1, 2:])
  return jnp.mean(jnp.abs(lap), axis=tuple(range(1, lap.ndim)))
