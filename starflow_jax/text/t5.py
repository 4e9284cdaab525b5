"""A Flax T5 encoder that loads Hugging Face T5 / Flan-T5 checkpoints, and its tokenizer.

STARFlow reads prompts through Flan-T5-XL's encoder (ALGORITHM.md section 5): token ids ->
shared embedding -> `num_layers` pre-norm blocks (T5 RMS layer norm, self-attention without
query scaling plus a bucketed relative position bias computed by the first block and shared by
all, then a gated-GELU or ReLU feed-forward) -> final layer norm. Output [B, L, d_model].
Parameters load from a Hugging Face directory (`config.json` + `model.safetensors`, or a sharded
`model.safetensors.index.json`): `T5EncoderModel` and full `T5ForConditionalGeneration` files
both work (the decoder is ignored). The tokenizer is the checkpoint's sentencepiece model
(`spiece.model`, read with `sentencepiece`): ids, then </s>, padded with <pad>
or truncated to `max_length` as `T5Tokenizer(..., padding="max_length", truncation=True)`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import sentencepiece

from starflow_jax import axes, fileio, layers
from starflow_jax.errors import UserError
from starflow_jax.interop.state_dict_io import read_hf_directory, write_safetensors

PAD_ID, EOS_ID = 0, 1


@dataclasses.dataclass(frozen=True)
class T5Config:
  vocab_size: int
  d_model: int
  d_kv: int
  d_ff: int
  num_layers: int
  num_heads: int
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  feed_forward_proj: str = "gated-gelu"

  @classmethod
  def from_hf(cls, values: dict) -> "T5Config":
    fields = {f.name for f in dataclasses.fields(cls)}
    config = cls(**{k: v for k, v in values.items() if k in fields})
    if config.feed_forward_proj not in ("gated-gelu", "relu", "gated-relu"):
      raise UserError(f"T5 feed_forward_proj={config.feed_forward_proj!r} is not supported "
                      "(gated-gelu, gated-relu, relu)")
    return config


def relative_position_buckets(query_length: int, key_length: int, num_buckets: int, max_distance: int) -> np.ndarray:
  """Bidirectional T5 buckets [Q, K] of relative positions key - query (HF's formula)."""
  relative = np.arange(key_length)[None, :] - np.arange(query_length)[:, None]
  num_buckets //= 2
  buckets = (relative > 0).astype(np.int64) * num_buckets
  relative = np.abs(relative)
  max_exact = num_buckets // 2
  is_small = relative < max_exact
  large = max_exact + (np.log(np.maximum(relative, 1).astype(np.float32) / max_exact) /
                       math.log(max_distance / max_exact) * (num_buckets - max_exact)).astype(np.int64)
  large = np.minimum(large, num_buckets - 1)
  return buckets + np.where(is_small, relative, large)


class T5LayerNorm(nn.Module):
  """x * rsqrt(mean(x^2) + eps) * weight (no mean, no bias), statistics in float32."""

  eps: float = 1e-6

  @nn.compact
  def __call__(self, x):
    weight = self.param("scale", layers.logical(nn.initializers.ones, (axes.NORM,)), (x.shape[-1],), jnp.float32)
    xf = x.astype(jnp.float32)
    return (weight * (xf * jax.lax.rsqrt(jnp.mean(xf * xf, -1, keepdims=True) + self.eps))).astype(x.dtype)


class T5Encoder(nn.Module):
  """ids [B, L] (int), mask [B, L] (True = token) -> hidden states [B, L, d_model]."""

  config: T5Config
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, ids: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    cfg = self.config
    dense = lambda features, name, names: nn.Dense(features,
                                                   use_bias=False,
                                                   dtype=self.dtype,
                                                   param_dtype=jnp.float32,
                                                   name=name,
                                                   kernel_init=layers.logical(layers.dense_init(), names))
    h = nn.Embed(cfg.vocab_size,
                 cfg.d_model,
                 dtype=self.dtype,
                 param_dtype=jnp.float32,
                 name="shared",
                 embedding_init=layers.logical(nn.initializers.normal(1.0), (axes.VOCAB, axes.EMBED)))(ids)
    length = ids.shape[1]
    buckets = relative_position_buckets(length, length, cfg.relative_attention_num_buckets,
                                        cfg.relative_attention_max_distance)
    bias_table = self.param("relative_attention_bias", layers.logical(layers.dense_init(), (axes.BUCKETS, axes.HEADS)),
                            (cfg.relative_attention_num_buckets, cfg.num_heads), jnp.float32)
    position_bias = jnp.transpose(bias_table[buckets], (2, 0, 1))[None]  # [1, H, L, L]
    key_mask = jnp.where(mask[:, None, None, :], 0.0, jnp.finfo(jnp.float32).min)  # [B, 1, 1, L]
    bias = position_bias + key_mask
    for i in range(cfg.num_layers):
      x = T5LayerNorm(cfg.layer_norm_epsilon, name=f"block_{i}_attention_norm")(h)
      q = dense(cfg.num_heads * cfg.d_kv, f"block_{i}_q", (axes.EMBED, axes.HEADS))(x)
      k = dense(cfg.num_heads * cfg.d_kv, f"block_{i}_k", (axes.EMBED, axes.HEADS))(x)
      v = dense(cfg.num_heads * cfg.d_kv, f"block_{i}_v", (axes.EMBED, axes.HEADS))(x)
      split = lambda t: t.reshape(t.shape[0], length, cfg.num_heads, cfg.d_kv)
      logits = jnp.einsum("bqhd,bkhd->bhqk", split(q), split(k), preferred_element_type=jnp.float32) + bias
      weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)  # T5: no 1/sqrt(d) scaling
      attended = jnp.einsum("bhqk,bkhd->bqhd", weights, split(v)).reshape(h.shape[0], length, -1)
      h = h + dense(cfg.d_model, f"block_{i}_o", (axes.HEADS, axes.EMBED))(attended)
      x = T5LayerNorm(cfg.layer_norm_epsilon, name=f"block_{i}_ffn_norm")(h)
      if cfg.feed_forward_proj.startswith("gated"):
        act = (lambda t: jax.nn.gelu(t, approximate=True)) if cfg.feed_forward_proj == "gated-gelu" else jax.nn.relu
        hidden = act(dense(cfg.d_ff, f"block_{i}_wi_0",
                           (axes.EMBED, axes.MLP))(x)) * dense(cfg.d_ff, f"block_{i}_wi_1", (axes.EMBED, axes.MLP))(x)
      else:
        hidden = jax.nn.relu(dense(cfg.d_ff, f"block_{i}_wi", (axes.EMBED, axes.MLP))(x))
      h = h + dense(cfg.d_model, f"block_{i}_wo", (axes.MLP, axes.EMBED))(hidden)
    return T5LayerNorm(cfg.layer_norm_epsilon, name="final_norm")(h).astype(jnp.float32)


# ---------------------------------------------------------------------- Hugging Face weights
def _hf_key(ours: str) -> str:
  if ours == "shared/embedding":
    return "shared.weight"
  if ours == "relative_attention_bias":
    return "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
  if ours == "final_norm/scale":
    return "encoder.final_layer_norm.weight"
  block, rest = ours.split("_", 2)[1], ours.split("_", 2)[2]
  name = rest.split("/")[0]
  table = {
      "attention_norm": "layer.0.layer_norm.weight",
      "q": "layer.0.SelfAttention.q.weight",
      "k": "layer.0.SelfAttention.k.weight",
      "v": "layer.0.SelfAttention.v.weight",
      "o": "layer.0.SelfAttention.o.weight",
      "ffn_norm": "layer.1.layer_norm.weight",
      "wi_0": "layer.1.DenseReluDense.wi_0.weight",
      "wi_1": "layer.1.DenseReluDense.wi_1.weight",
      "wi": "layer.1.DenseReluDense.wi.weight",
      "wo": "layer.1.DenseReluDense.wo.weight"
  }
  return f"encoder.block.{block}.{table[name]}"


def load_hf_t5(directory: str) -> tuple[T5Config, dict]:
  """(config, params) of the encoder of a Hugging Face T5 checkpoint directory."""
  config = T5Config.from_hf(fileio.read_json(fileio.as_path(directory) / "config.json"))
  sd = read_hf_directory(directory, "model.safetensors")
  shapes = jax.eval_shape(lambda: nn.unbox(
      T5Encoder(config).init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32), jnp.ones((1, 4), bool))["params"]))
  problems = []

  def fill(path, leaf):
    ours = "/".join(getattr(k, "key", str(k)) for k in path)
    key = _hf_key(ours)
    if key not in sd and key == "shared.weight" and "encoder.embed_tokens.weight" in sd:
      key = "encoder.embed_tokens.weight"
    if key not in sd:
      problems.append(f"missing {key}")
      return np.zeros(leaf.shape, np.float32)
    value = np.asarray(sd[key], np.float32)
    if path[-1].key == "kernel":
      value = value.T
    if value.shape != leaf.shape:
      problems.append(f"shape of {key}: file {value.shape}, config {leaf.shape}")
    return value

  params = jax.tree_util.tree_map_with_path(fill, shapes)
  if problems:
    raise UserError(f"{directory}: cannot load the T5 encoder: " + "; ".join(problems))
  return config, params


def save_hf_t5(directory: str, config: T5Config, params) -> None:
  """Writes an encoder-only Hugging Face folder (config.json + model.safetensors, the names
  `load_hf_t5` reads); the tokenizer's spiece.model is the caller's."""
  directory = fileio.as_path(directory)
  if (directory / "config.json").exists():
    raise FileExistsError(f"{directory} already holds a config.json; choose a new directory")
  state_dict = {}

  def put(path, leaf):
    ours = "/".join(getattr(k, "key", str(k)) for k in path)
    value = np.asarray(leaf, np.float32)
    state_dict[_hf_key(ours)] = np.ascontiguousarray(value.T if path[-1].key == "kernel" else value)

  jax.tree_util.tree_map_with_path(put, params)
  directory.mkdir(parents=True, exist_ok=True)
  write_safetensors(str(directory / "model.safetensors"), state_dict)
  fileio.write_json(directory / "config.json", {
      "model_type": "t5",
      "architectures": ["T5EncoderModel"],
      "is_encoder_decoder": False,
      **dataclasses.asdict(config)
  })


class T5Tokenizer:
  """Sentencepiece ids + </s>, padded/truncated to max_length (HF T5Tokenizer behaviour)."""

  def __init__(self, directory: str, max_length: int):
    path = fileio.as_path(directory) / "spiece.model"
    if not path.is_file():
      raise FileNotFoundError(f"{path} not found: the T5 checkpoint directory needs its spiece.model")
    self.processor = sentencepiece.SentencePieceProcessor(model_proto=path.read_bytes())
    self.max_length = max_length

  def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    ids = np.zeros((len(texts), self.max_length), np.int32)
    for i, text in enumerate(texts):
      row = list(self.processor.encode(text))[:self.max_length - 1] + [EOS_ID]
      ids[i, :len(row)] = row
    return ids, ids != PAD_ID


@dataclasses.dataclass(frozen=True)
class T5Reference:
  """The frozen T5 / Flan-T5 encoder a model was trained with, as its model directory records it
  (the weights stay in their own folder)."""

  name: str  # as the official config names it, e.g. 'google/flan-t5-xl'
  path: str  # a local Hugging Face folder with its weights and spiece.model ("": not given)
  max_length: int  # tokens per prompt (official txt_size)
  width: int  # hidden size d_model (the model's txt_dim)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, values: dict) -> "T5Reference":
    return cls(**values)

  def build(self, path: str | None = None) -> "T5TextEncoder":
    """The encoder from `path` (default: the recorded folder), checked against the model's width."""
    path = path or self.path
    if not path:
      raise UserError(f"this model reads prompts through {self.name}; give its Hugging Face folder "
                      "(--t5=DIR)")
    encoder = T5TextEncoder(path, self.max_length)
    if encoder.config.d_model != self.width:
      raise UserError(f"{path} is a T5 of width {encoder.config.d_model}, but the model was trained on "
                      f"{self.name} of width {self.width} (model.txt_dim); give that encoder")
    return encoder


class T5TextEncoder:
  """Prompts -> embeddings [B, max_length, d_model] with a frozen Hugging Face T5 encoder."""

  def __init__(self, directory: str, max_length: int, dtype=jnp.float32):
    self.config, params = load_hf_t5(directory)
    self.params = jax.device_put(params)  # once: host arrays would be copied in on every call
    self.tokenizer = T5Tokenizer(directory, max_length)
    module = T5Encoder(self.config, dtype)
    self._apply = jax.jit(lambda p, ids, mask: module.apply({"params": p}, ids, mask) * mask[..., None])

  def __call__(self, prompts: Sequence[str]) -> jnp.ndarray:
    """Embeddings [B, max_length, d_model], zero at padding positions (the official encode_text
    multiplies the encoder's output by the attention mask)."""
    ids, mask = self.tokenizer(prompts)
    return self._apply(self.params, jnp.asarray(ids), jnp.asarray(mask))
