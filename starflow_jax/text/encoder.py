"""The built-in text encoder: token embeddings + a small bidirectional transformer.

Maps token ids [B, L] to condition embeddings [B, L, output_dim] for the flow's `proj_txt`
(official txt_dim). Padding positions are masked out of attention and their outputs are zero.
It is trained jointly with the flow (a stand-in for the frozen Flan-T5 of the paper).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from starflow_jax import axes, layers
from starflow_jax.errors import UserError
from starflow_jax.text.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class TextEncoderConfig:
  tokenizer: Tokenizer
  width: int = 64
  num_layers: int = 2
  head_dim: int = 32
  output_dim: int = 64
  compute_dtype: str = "float32"

  def validate(self) -> "TextEncoderConfig":
    if self.width % self.head_dim:
      raise UserError(f"text encoder width={self.width} is not divisible by head_dim={self.head_dim}")
    if self.num_layers < 0 or self.output_dim <= 0:
      raise UserError("text encoder needs num_layers >= 0 and output_dim > 0")
    return self

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["tokenizer"] = self.tokenizer.to_dict()
    return d

  @classmethod
  def from_dict(cls, d: dict) -> "TextEncoderConfig":
    d = dict(d)
    d["tokenizer"] = Tokenizer.from_dict(d["tokenizer"])
    return cls(**d).validate()


class TextEncoder(nn.Module):
  config: TextEncoderConfig

  @nn.compact
  def __call__(self, token_ids: jnp.ndarray) -> jnp.ndarray:
    cfg = self.config
    dtype = jnp.dtype(cfg.compute_dtype)
    length = token_ids.shape[-1]
    valid = token_ids != 0  # [B, L]
    h = nn.Embed(cfg.tokenizer.vocab_size,
                 cfg.width,
                 dtype=dtype,
                 param_dtype=jnp.float32,
                 embedding_init=layers.logical(layers.dense_init(), (axes.VOCAB, axes.EMBED)),
                 name="token_embed")(token_ids)
    pos = self.param("position_embed", layers.logical(layers.dense_init(), (axes.LENGTH, axes.EMBED)),
                     (length, cfg.width), jnp.float32)
    h = h + pos.astype(dtype)
    mask = valid[:, None, :]  # [B, 1, L] -> every query sees the valid keys
    no_rotation = (jnp.ones((length, cfg.head_dim)), jnp.zeros((length, cfg.head_dim)))
    for i in range(cfg.num_layers):
      h, _ = layers.TransformerLayer(num_heads=cfg.width // cfg.head_dim,
                                     head_dim=cfg.head_dim,
                                     mlp_hidden=4 * cfg.width,
                                     dtype=dtype,
                                     name=f"layers_{i}")(h, *no_rotation,
                                                         jnp.broadcast_to(mask, (h.shape[0], length, length)))
    h = layers.make_norm("layer_norm", "final_norm", dtype)(h)
    out = nn.Dense(cfg.output_dim,
                   dtype=dtype,
                   param_dtype=jnp.float32,
                   name="proj_out",
                   kernel_init=layers.logical(layers.dense_init(), (axes.EMBED, axes.TEXT)),
                   bias_init=layers.logical(nn.initializers.zeros, (axes.TEXT,)))(h)
    return (out * valid[..., None]).astype(jnp.float32)
