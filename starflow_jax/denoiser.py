"""The flow-score-matching denoiser network (official `NonCausalBlock`) and its attention mask.

A light non-causal transformer s_phi on the noisy latent tokens x~ (with the text prefix when
conditional) predicting sigma * (-grad log p(x~)); sampling ends with x_hat = x~ - step * s_phi(x~)
(ALGORITHM.md section 7). For video, attention is frame-block causal with a look-ahead of
A - 1 frames and a window of G past frames.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from starflow_jax import attention, axes, layers, rope
from starflow_jax.rope import TokenGrid

Array = jnp.ndarray
NO_WINDOW = 10000  # the official default when denoiser_window is None


@dataclasses.dataclass(frozen=True)
class FrameBlockMask(attention.PositionMask):
  """The denoiser's attention over [prefix (L tokens); frames of N tokens] (official
  `get_local_window_mask`): a token of frame n sees all L prefix tokens and frames
  n + A - 1 - G .. n + A - 1; prefix tokens see the prefix and frames 0 .. A - 1
  (A = lookahead, G = window)."""

  cond_len: int
  tokens_per_frame: int
  lookahead: int
  window: int | None

  def allowed(self, q, k, num_queries: int, num_keys: int):
    g = NO_WINDOW if self.window is None else self.window
    n, length = self.tokens_per_frame, self.cond_len
    key_frame = (k - length) // n  # floor division, as torch's //
    lowest = (q - length) // n + self.lookahead - 1 - g
    highest = ((q - length) * (q >= length)) // n + self.lookahead - 1  # max(q - L, 0) // N
    return (k < length) | ((key_frame >= lowest) & (key_frame <= highest))


def frame_block_mask(cond_len: int, num_frames: int, tokens_per_frame: int, lookahead: int,
                     window: int | None) -> Array:
  """[S, S] bool (S = L + T*N), True = may attend: `FrameBlockMask` as an array."""
  s = cond_len + num_frames * tokens_per_frame
  return FrameBlockMask(cond_len, tokens_per_frame, lookahead, window).dense(s, s)


class Denoiser(nn.Module):
  """Non-causal transformer on latent tokens [B, T*N, D] -> [B, T*N, D] (the learned score)."""

  token_dim: int
  width: int
  num_layers: int
  head_dim: int
  pt_seq_len: int
  rope_layout: str
  conditioning: str | None = None
  num_classes: int = 0
  lookahead: int = 0  # official temporal_causal (A); 0 = full attention
  window: int | None = None  # official denoiser_window (G)
  use_final_norm: bool = True
  norm_type: str = "layer_norm"
  use_bias: bool = True
  expansion: float = 4.0
  dtype: Any = jnp.float32
  remat: bool = False
  attention_block_size: int | None = None  # flash attention past this many tokens (None: dense)

  @nn.compact
  def __call__(self, x: Array, grid: TokenGrid, cond: Array | None = None) -> Array:
    """x [B, S, D] raster tokens of the noisy latent (S = grid.num_tokens) -> s_phi [B, S, D]."""
    dense = dict(dtype=self.dtype, param_dtype=jnp.float32)
    h = nn.Dense(self.width,
                 name="proj_in",
                 kernel_init=layers.logical(layers.dense_init(), (axes.PATCH, axes.EMBED)),
                 bias_init=layers.logical(nn.initializers.zeros, (axes.EMBED,)),
                 **dense)(x.astype(self.dtype))
    cond_len = 0
    if self.conditioning == "text" and cond is not None:
      prefix = nn.Dense(self.width,
                        name="proj_txt",
                        kernel_init=layers.logical(layers.dense_init(), (axes.TEXT, axes.EMBED)),
                        bias_init=layers.logical(nn.initializers.zeros, (axes.EMBED,)),
                        **dense)(cond.astype(self.dtype))
      cond_len = prefix.shape[1]
      h = jnp.concatenate([prefix, h], axis=1)
    elif self.conditioning == "class" and cond is not None:
      prefix = nn.Embed(self.num_classes + 1,
                        self.width,
                        name="class_embed",
                        dtype=self.dtype,
                        param_dtype=jnp.float32,
                        embedding_init=layers.logical(layers.dense_init(),
                                                      (axes.CLASSES, axes.EMBED)))(cond.astype(jnp.int32))[:, None]
      cond_len = 1
      h = jnp.concatenate([prefix, h], axis=1)
    cos, sin = (
        jnp.asarray(t) for t in rope.rope_table(grid, cond_len, self.pt_seq_len, self.head_dim, self.rope_layout))
    mask = None
    if self.lookahead > 0 and grid.frames > 1:
      mask = FrameBlockMask(cond_len, grid.tokens_per_frame, self.lookahead, self.window)
    layer_cls = layers.layer_class(self.remat)
    for i in range(self.num_layers):
      h, _ = layer_cls(num_heads=self.width // self.head_dim,
                       head_dim=self.head_dim,
                       mlp_hidden=int(self.width * self.expansion),
                       norm_type=self.norm_type,
                       use_bias=self.use_bias,
                       dtype=self.dtype,
                       attention_block_size=self.attention_block_size,
                       name=f"layers_{i}")(h, cos, sin, mask)
    h = h[:, cond_len:]
    if self.use_final_norm:
      h = layers.RMSNorm(name="final_norm")(h)
    out = nn.Dense(self.token_dim,
                   name="proj_out",
                   kernel_init=layers.logical(nn.initializers.zeros, (axes.EMBED, axes.PATCH)),
                   bias_init=layers.logical(nn.initializers.zeros, (axes.PATCH,)),
                   **dense)(h)
    return out.astype(jnp.float32)
