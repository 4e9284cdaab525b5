"""Latents <-> tokens: patchify, unpatchify and the token orders of the flow blocks.

Our latents are channels-last: images [B, H, W, C], videos [B, T, H, W, C]. Internally every
input is a video: tokens [B, T, N, D] with N = (H/p)(W/p) and D = p*p*C, images having T = 1.
The patch channel order is (p1, p2, c) as in the official code, so imported token-space
weights (proj_in, proj_out) line up.
"""

from __future__ import annotations

import jax.numpy as jnp

from starflow_jax.rope import TokenGrid

Array = jnp.ndarray


def as_video(x: Array) -> tuple[Array, bool]:
  """[B, H, W, C] -> ([B, 1, H, W, C], True); a 5D video passes through with False."""
  if x.ndim == 4:
    return x[:, None], True
  if x.ndim == 5:
    return x, False
  raise ValueError(f"expected latents [B, H, W, C] or [B, T, H, W, C], got shape {x.shape}")


def patchify(x: Array, patch_size: int) -> tuple[Array, TokenGrid]:
  """[B, T, H, W, C] -> tokens [B, T, N, p*p*C] in raster order, and the token grid."""
  b, t, h, w, c = x.shape
  p = patch_size
  if h % p or w % p:
    raise ValueError(f"frame size {h}x{w} is not divisible by patch_size={p}; "
                     "use a size that is a multiple of the patch size")
  x = x.reshape(b, t, h // p, p, w // p, p, c)
  x = x.transpose(0, 1, 2, 4, 3, 5, 6)  # [B, T, H/p, W/p, p1, p2, C]
  grid = TokenGrid(frames=t, height=h // p, width=w // p)
  return x.reshape(b, t, grid.tokens_per_frame, p * p * c), grid


def unpatchify(tokens: Array, grid: TokenGrid, patch_size: int) -> Array:
  """Tokens [B, T, N, p*p*C] -> latents [B, T, H, W, C]."""
  b, t, n, d = tokens.shape
  p = patch_size
  c = d // (p * p)
  x = tokens.reshape(b, t, grid.height, grid.width, p, p, c)
  x = x.transpose(0, 1, 2, 4, 3, 5, 6)  # [B, T, H/p, p1, W/p, p2, C]
  return x.reshape(b, t, grid.height * p, grid.width * p, c)


def permute(tokens: Array, order: str, tokens_per_frame: int) -> Array:
  """Puts tokens [B, S, D] (S = T * N, raster order) in a block's order; an involution.

  'identity' keeps the order, 'flip' reverses the sequence, 'flip_in_frame' reverses the
  tokens within each frame of `tokens_per_frame` tokens (frames stay in time order).
  """
  if order == "identity":
    return tokens
  if order == "flip":
    return tokens[:, ::-1]
  if order == "flip_in_frame":
    b, s, d = tokens.shape
    return tokens.reshape(b, s // tokens_per_frame, tokens_per_frame, d)[:, :, ::-1].reshape(b, s, d)
  raise ValueError(f"unknown token order {order!r}")


unpermute = permute  # every order we use is its own inverse
