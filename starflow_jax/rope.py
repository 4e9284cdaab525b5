"""Rotary position embeddings: 2D / 3D positions and angle tables, as in the official code.

Each attention head of width `head_dim` rotates R = head_dim / 2 interleaved pairs
(x_{2j}, x_{2j+1}) by angle pos_axis(j) * freq_j (ALGORITHM.md section 5):
  * '2d': pairs [0, R/2) follow the row, [R/2, R) the column, freq_j = 10000^(-2j/R).
  * '3d': the first R-8 pairs split into row / column halves, freq_j = 10000^(-2j/(R-8)); the last
    8 pairs follow a third coordinate (frame index, or k / L * pt_seq_len for text token k),
    freq_j = 10000^(-j/8).
Tables are indexed by sequence position (text prefix first, then frames in raster order) and are
built with numpy from static shapes, so under jit they are constants.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax.numpy as jnp
import numpy as np

THETA = 10000.0
THIRD_AXIS_PAIRS = 8


@dataclasses.dataclass(frozen=True)
class TokenGrid:
  """Static layout of a token sequence: `frames` frames of `height` x `width` tokens each."""

  frames: int
  height: int
  width: int

  @property
  def tokens_per_frame(self) -> int:
    return self.height * self.width

  @property
  def num_tokens(self) -> int:
    return self.frames * self.height * self.width


def rope_positions(grid: TokenGrid, cond_len: int, pt_seq_len: int, layout: str) -> np.ndarray:
  """Positions [cond_len + T*h*w, n_axes] (float32) of the official `get_positions`.

  Rows and columns are scaled so a grid of side pt_seq_len gets integer coordinates
  (i / sqrt(h*w) * pt_seq_len); the third axis is the frame index, and text token k sits at
  (0, 0, k / cond_len * pt_seq_len) in front of the frames.
  """
  h, w = grid.height, grid.width
  mean_len = np.float32(math.sqrt(h * w))
  rows = np.arange(h, dtype=np.float32) / mean_len * np.float32(pt_seq_len)
  cols = np.arange(w, dtype=np.float32) / mean_len * np.float32(pt_seq_len)
  row, col = (a.reshape(-1) for a in np.meshgrid(rows, cols, indexing="ij"))
  if layout == "2d":
    if cond_len:
      raise ValueError("2D RoPE has no place for a condition prefix; use the 3D layout")
    if grid.frames != 1:
      raise ValueError(f"2D RoPE covers one frame, got {grid.frames}; video needs the 3D layout "
                       "(temporal_causal > 0 or a text condition)")
    return np.stack([row, col], axis=-1)
  if layout != "3d":
    raise ValueError(f"unknown RoPE layout {layout!r}")
  frame = np.repeat(np.arange(grid.frames, dtype=np.float32), h * w)
  pos = np.stack([np.tile(row, grid.frames), np.tile(col, grid.frames), frame], axis=-1)
  if cond_len:
    text = np.zeros((cond_len, 3), np.float32)
    text[:, 2] = np.arange(cond_len, dtype=np.float32) / np.float32(cond_len) * np.float32(pt_seq_len)
    pos = np.concatenate([text, pos], axis=0)
  return pos


def rope_frequencies(head_dim: int, layout: str) -> list[np.ndarray]:
  """One float32 frequency vector per position axis (their lengths sum to head_dim / 2)."""
  pairs = head_dim // 2
  spatial = pairs - THIRD_AXIS_PAIRS if layout == "3d" else pairs
  freqs = 1.0 / (THETA**(np.arange(0, spatial, 2, dtype=np.float32)[:spatial // 2] / np.float32(spatial)))
  freqs = freqs.astype(np.float32)
  if layout == "2d":
    return [freqs, freqs]
  third = 1.0 / (THETA**(np.arange(THIRD_AXIS_PAIRS, dtype=np.float32) / np.float32(THIRD_AXIS_PAIRS)))
  return [freqs, freqs, third.astype(np.float32)]


@functools.lru_cache(maxsize=64)
def rope_table(grid: TokenGrid, cond_len: int, pt_seq_len: int, head_dim: int,
               layout: str) -> tuple[np.ndarray, np.ndarray]:
  """(cos, sin), each [cond_len + T*h*w, head_dim] float32, each angle repeated for its pair."""
  pos = rope_positions(grid, cond_len, pt_seq_len, layout)
  freqs = rope_frequencies(head_dim, layout)
  angles = np.concatenate([np.einsum("s,f->sf", pos[:, i], f) for i, f in enumerate(freqs)], -1)
  angles = np.repeat(angles.astype(np.float32), 2, axis=-1)  # [S, head_dim]: (pair, pair)
  cos, sin = np.cos(angles), np.sin(angles)
  cos.flags.writeable = False
  sin.flags.writeable = False
  return cos, sin


def rotate_pairs(x: jnp.ndarray) -> jnp.ndarray:
  """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...): the official `rotate_half`."""
  pairs = x.reshape(*x.shape[:-1], -1, 2)
  return jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(x.shape)


def apply_rope(x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray) -> jnp.ndarray:
  """Rotates x [B, S, H, Dh] with per-position tables cos/sin [S, Dh] (float32 math)."""
  dtype = x.dtype
  x = x.astype(jnp.float32)
  out = x * cos[None, :, None, :] + rotate_pairs(x) * sin[None, :, None, :]
  return out.astype(dtype)
