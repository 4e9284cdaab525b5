"""Lossless conversion between our parameters and the official PyTorch `state_dict`.

The official `transformer_flow.Model` names parameters like
`blocks.2.attn_blocks.0.attention.qkv.weight` ([out, in] Linear weights, q/k/v packed along the
output, heads contiguous). Our tree names them `deep_block/layers_0/attention/qkv/kernel`
([in, 3, heads, head_dim]). The mapping below is derived from our own parameter tree, so every
leaf is accounted for in both directions; import checks that the official file has exactly the
expected keys and shapes and names the offending key when it does not.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import numpy as np

from starflow_jax import model as model_lib
from starflow_jax.config import ModelConfig
from starflow_jax.errors import UserError

# Official buffers that carry no information (deprecated); ignored on import, written on export.
_BUFFER_PATTERNS = (r"blocks\.\d+\.attn_mask", r"var", r"feat_rope\.freqs_(cos|sin)", r"feat_rope_gen\.freqs_(cos|sin)")
# Prefixes that wrappers add to state_dict keys (DDP, torch.compile, FSDP).
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "_fsdp_wrapped_module.")


@dataclasses.dataclass(frozen=True)
class LeafMapping:
  ours: tuple[str, ...]  # path in our params tree
  official: str  # official state_dict key
  in_axes: int  # for kernels: number of leading input axes in our layout; 0 = plain reshape

  def official_shape(self, our_shape: tuple[int, ...]) -> tuple[int, ...]:
    if self.ours[-1] == "sos":
      return (1, 1, our_shape[0])
    if self.in_axes:
      return (int(np.prod(our_shape[self.in_axes:])), int(np.prod(our_shape[:self.in_axes])))
    return (int(np.prod(our_shape)),)

  def to_official(self, value: np.ndarray) -> np.ndarray:
    value = np.asarray(value)
    if self.in_axes:
      n_in = int(np.prod(value.shape[:self.in_axes]))
      return np.ascontiguousarray(value.reshape(n_in, -1).T)
    return value.reshape(self.official_shape(value.shape))

  def to_ours(self, value: np.ndarray, our_shape: tuple[int, ...]) -> np.ndarray:
    value = np.asarray(value)
    if self.in_axes:
      return np.ascontiguousarray(value.T).reshape(our_shape)
    return value.reshape(our_shape)


def _official_block_prefix(config: ModelConfig, name: str) -> str:
  kind, index = model_lib.block_key_kind(name)
  if kind == "deep":
    return f"blocks.{config.num_blocks - 1}"
  if kind == "denoiser":
    return "learnable_self_denoiser"
  return f"blocks.{index}"


def _leaf_mapping(config: ModelConfig, path: tuple[str, ...]) -> LeafMapping:
  prefix = _official_block_prefix(config, path[0])
  rest = path[1:]
  if rest == ("sos",):
    return LeafMapping(path, f"{prefix}.sos_embed", 0)
  if rest[0] in ("proj_in", "proj_out", "proj_txt"):
    kind = {"kernel": "weight", "bias": "bias"}[rest[1]]
    return LeafMapping(path, f"{prefix}.{rest[0]}.{kind}", 1 if rest[1] == "kernel" else 0)
  if rest == ("final_norm", "scale"):
    return LeafMapping(path, f"{prefix}.final_norm.weight", 0)
  match = re.fullmatch(r"layers_(\d+)", rest[0])
  if match:
    layer = f"{prefix}.attn_blocks.{match.group(1)}"
    sub, leaf = rest[1:-1], rest[-1]
    kind = {"kernel": "weight", "bias": "bias", "scale": "weight"}[leaf]
    if sub == ("attention_norm",):
      return LeafMapping(path, f"{layer}.attention.norm.{kind}", 0)
    if sub == ("mlp_norm",):
      return LeafMapping(path, f"{layer}.mlp.norm.{kind}", 0)
    if sub == ("attention", "qkv"):
      return LeafMapping(path, f"{layer}.attention.qkv.{kind}", 1 if leaf == "kernel" else 0)
    if sub == ("attention", "out"):
      return LeafMapping(path, f"{layer}.attention.proj.{kind}", 2 if leaf == "kernel" else 0)
    if sub == ("mlp", "fc_in"):
      return LeafMapping(path, f"{layer}.mlp.main.0.{kind}", 1 if leaf == "kernel" else 0)
    if sub == ("mlp", "fc_out"):
      return LeafMapping(path, f"{layer}.mlp.main.2.{kind}", 1 if leaf == "kernel" else 0)
  raise UserError(f"parameter {'/'.join(path)} has no official equivalent "
                  "(class-label conditioning cannot be exported to the official format)")


def parameter_mappings(config: ModelConfig, param_shapes) -> dict[str, tuple[LeafMapping, tuple]]:
  """official key -> (mapping, our shape) for every leaf of our parameter tree."""
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(param_shapes)[0]:
    names = tuple(getattr(k, "key", getattr(k, "name", str(k))) for k in path)
    mapping = _leaf_mapping(config, names)
    flat[mapping.official] = (mapping, tuple(leaf.shape))
  return flat


def official_buffers(config: ModelConfig) -> dict[str, np.ndarray]:
  """The deprecated buffers the official Model registers (so strict=True loading works)."""
  pt = config.rope_seq_len
  out = {}
  mask_len = pt * pt + config.txt_size
  for i, n_layers in enumerate(config.block_layers):
    if n_layers > 0 or i == config.num_blocks - 1:
      out[f"blocks.{i}.attn_mask"] = np.tril(np.ones((mask_len, mask_len), np.float32))
  out["var"] = np.ones((pt * pt, config.token_dim), np.float32)
  if config.rope and pt > 0:
    rows = pt * pt + (config.txt_size if config.txt_size > 0 else 0)
    zeros = np.zeros((rows, config.head_dim), np.float32)
    out["feat_rope.freqs_cos"] = zeros
    out["feat_rope.freqs_sin"] = zeros.copy()
  return out


def _is_buffer(key: str) -> bool:
  return any(re.fullmatch(p, key) for p in _BUFFER_PATTERNS)


def clean_state_dict(state_dict) -> dict[str, np.ndarray]:
  """Unwraps {'model': sd}-style containers and strips DDP/compile/FSDP key prefixes."""
  sd = dict(state_dict)
  for wrapper in ("state_dict", "model", "module", "ema"):
    if set(sd) == {wrapper} and isinstance(sd[wrapper], dict):
      sd = dict(sd[wrapper])
  cleaned = {}
  for key, value in sd.items():
    for prefix in _WRAPPER_PREFIXES:
      while key.startswith(prefix):
        key = key[len(prefix):]
    cleaned[key] = np.asarray(value)
  return cleaned


def import_official(config: ModelConfig, state_dict, param_shapes):
  """Official state_dict -> our params (same tree structure as `param_shapes`), float32.

  Raises ValueError naming every missing key, unknown key and shape mismatch.
  """
  sd = clean_state_dict(state_dict)
  mappings = parameter_mappings(config, param_shapes)
  missing = sorted(set(mappings) - set(sd))
  unknown = sorted(k for k in set(sd) - set(mappings) if not _is_buffer(k))
  problems = []
  if missing:
    problems.append(f"missing keys (the model config expects them): {missing}")
  if unknown:
    problems.append(f"unknown keys (not in a model with this config): {unknown}")
  for key, (mapping, our_shape) in sorted(mappings.items()):
    if key in sd and tuple(sd[key].shape) != mapping.official_shape(our_shape):
      problems.append(f"shape mismatch for {key}: file has {tuple(sd[key].shape)}, the config "
                      f"implies {mapping.official_shape(our_shape)}")
  if problems:
    raise UserError("cannot import the official state_dict:\n  " + "\n  ".join(problems) +
                    "\nCheck that --config holds the Model(...) keyword arguments these weights "
                    "were trained with.")
  by_path = {m.ours: m.to_ours(sd[key].astype(np.float32), shape) for key, (m, shape) in mappings.items()}

  def fill(path, leaf):
    names = tuple(getattr(k, "key", getattr(k, "name", str(k))) for k in path)
    return by_path[names]

  return jax.tree_util.tree_map_with_path(fill, param_shapes)


def export_official(config: ModelConfig, params) -> dict[str, np.ndarray]:
  """Our params -> the official state_dict (float32, contiguous), deprecated buffers included."""
  config.to_official_kwargs()  # raises for architectures with no official equivalent
  mappings = parameter_mappings(config, params)
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    names = tuple(getattr(k, "key", getattr(k, "name", str(k))) for k in path)
    flat[names] = np.asarray(jax.device_get(leaf), np.float32)
  out = {key: mapping.to_official(flat[mapping.ours]) for key, (mapping, _) in mappings.items()}
  out.update(official_buffers(config))
  return dict(sorted(out.items()))
