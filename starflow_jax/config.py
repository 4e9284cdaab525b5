"""The STARFlow model configuration: one frozen dataclass, field names as in the official code.

`ModelConfig` holds the architecture (what the official `transformer_flow.Model(...)` takes as
keyword arguments, same names) plus a few runtime fields of ours (compute dtype, remat). It is
hashable, so jitted functions take it as a static argument. `from_official_kwargs` /
`to_official_kwargs` convert to and from the official constructor arguments (golden
`config.json`), and `validate` rejects what we do not implement with an error naming the field.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp

from starflow_jax.errors import UserError

# Official keyword arguments we implement; any other key in an official config is rejected
# unless it is in _IGNORED_OFFICIAL_KWARGS (training-only switches that do not change the math).
_IGNORED_OFFICIAL_KWARGS = frozenset({"use_checkpoint", "use_checkpoint_mlp"})
# Official options that change the function computed; we accept only these values.
_FIXED_OFFICIAL_KWARGS = {
    "use_swiglu": False,
    "use_qk_norm": False,
    "use_post_norm": False,
    "hf_style_rope": False,
    "use_pretrained_lm": None,
    "use_mm_attn": False,
    "num_kv_heads": None,
    "local_attn_window": None,
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of a STARFlow / STARFlow-V model (official field names where they exist).

  Latents are [B, H, W, C] images or [B, T, H, W, C] videos with C = `in_channels` and
  H = W = `img_size` at training resolution; `patch_size` p turns them into tokens of width
  D = p * p * C. There are `num_blocks` flow blocks: `num_blocks - 1` shallow blocks of width
  `channels` and one deep block (last) of width `top_block_channels`.
  Shallow blocks read the condition unless `cond_top_only`; frame-local ones
  (`shallow_block_local`) then read it in every frame (our extension: the official code asserts
  cond_top_only for frame-local blocks), so such a model still decodes and streams frame by frame.
  """

  in_channels: int
  img_size: int
  patch_size: int
  channels: int
  num_blocks: int
  layers_per_block: tuple[int, ...]
  head_dim: int = 64
  num_heads: int | None = None
  top_block_channels: int | None = None
  rope: bool = True
  pt_seq_len: int | None = None
  sos: bool = True
  use_softplus: bool = True
  use_final_norm: bool = True
  use_bias: bool = True
  norm_type: str = "layer_norm"
  soft_clip: float = 0.0
  seq_order: str = "L2R"
  txt_size: int = 0
  txt_dim: int = 0
  cond_top_only: bool = False
  temporal_causal: int = 0
  shallow_block_local: bool = False
  learnable_self_denoiser: bool = False
  conditional_denoiser: bool = False
  denoiser_window: int | None = None
  # --- ours (not official constructor arguments) ---
  num_classes: int = 0  # class-label conditioning: a 1-token prefix from an embedding table
  denoiser_layers: int = 8
  expansion: float = 4.0  # MLP hidden width / model width (fixed at 4 officially)
  compute_dtype: str = "float32"  # transformer matmuls; flow arithmetic is always float32
  remat: bool = False  # rematerialise every transformer layer in the backward pass
  # Flash (block-wise) attention in tiles of this many tokens for longer sequences: the memory
  # of attention grows with the sequence instead of its square (None: dense attention).
  attention_block_size: int | None = None
  # Per-frame discrete actions (world models): an embedding of frame n's action enters the deep
  # block at frame n's positions (ids 0..num_actions-1; num_actions is the null action).
  num_actions: int = 0

  def __post_init__(self):
    object.__setattr__(self, "layers_per_block", tuple(int(n) for n in self.layers_per_block))

  # ------------------------------------------------------------------ derived quantities
  @property
  def token_dim(self) -> int:
    """D: channels of one token (a p x p patch of latents)."""
    return self.patch_size * self.patch_size * self.in_channels

  @property
  def grid_size(self) -> int:
    """Token grid side at training resolution (img_size / patch_size)."""
    return self.img_size // self.patch_size

  @property
  def rope_seq_len(self) -> int:
    """`pt_seq_len` of the official code: RoPE positions are scaled to this grid side."""
    return self.pt_seq_len or self.grid_size

  @property
  def deep_channels(self) -> int:
    return self.top_block_channels or self.channels

  @property
  def block_layers(self) -> tuple[int, ...]:
    """Layers of each of the `num_blocks` blocks (a single entry is repeated, as officially)."""
    if len(self.layers_per_block) == 1:
      return self.layers_per_block * self.num_blocks
    return self.layers_per_block

  @property
  def conditioning(self) -> str | None:
    """'text' (embedding prefix), 'class' (label embedding prefix) or None."""
    if self.txt_dim > 0:
      return "text"
    if self.num_classes > 0:
      return "class"
    return None

  @property
  def cond_len(self) -> int:
    """Length L of the condition prefix in the deep block's sequence."""
    return {"text": self.txt_size, "class": 1, None: 0}[self.conditioning]

  @property
  def rope_layout(self) -> str:
    """'3d' whenever there is a condition or frames (official: txt_size > 0 or video), else '2d'."""
    if self.txt_size > 0 or self.num_classes > 0 or self.temporal_causal > 0:
      return "3d"
    return "2d"

  @property
  def is_video(self) -> bool:
    return self.temporal_causal > 0

  @property
  def dtype(self):
    return jnp.dtype(self.compute_dtype)

  def heads(self, width: int) -> int:
    """Attention heads of a block of this width (validate() ensures num_heads agrees)."""
    return width // self.head_dim

  def block_permutation(self, index: int) -> str:
    """Token order of block `index` (deep block = num_blocks - 1): 'identity' or a flip.

    Official L2R: block i uses flip when i is even; R2L: when i is odd. For video
    (temporal_causal > 0) the flip reverses tokens inside each frame only.
    """
    flip = (index % 2 == 0) if self.seq_order == "L2R" else (index % 2 == 1)
    if not flip:
      return "identity"
    return "flip_in_frame" if self.temporal_causal > 0 else "flip"

  # ------------------------------------------------------------------ validation
  def validate(self) -> "ModelConfig":
    """Raises ValueError naming the field and the fix; returns self."""

    def fail(msg):
      raise UserError(f"invalid model config: {msg}")

    for name in ("in_channels", "img_size", "patch_size", "channels", "num_blocks", "head_dim"):
      if getattr(self, name) <= 0:
        fail(f"{name}={getattr(self, name)} must be positive")
    if self.img_size % self.patch_size:
      fail(f"img_size={self.img_size} is not divisible by patch_size={self.patch_size}; "
           "use a latent size that is a multiple of patch_size")
    if len(self.layers_per_block) not in (1, self.num_blocks):
      fail(f"layers_per_block has {len(self.layers_per_block)} entries but num_blocks="
           f"{self.num_blocks}; give one entry per block (or a single entry for all)")
    if self.block_layers[-1] <= 0:
      fail("the deep block (last entry of layers_per_block) needs at least one layer")
    for width_name, width in (("channels", self.channels), ("top_block_channels", self.deep_channels)):
      if width % self.head_dim:
        fail(f"{width_name}={width} is not divisible by head_dim={self.head_dim}; "
             "choose a width that is a multiple of head_dim")
    if self.num_heads is not None and self.num_heads * self.head_dim != self.channels:
      fail(f"num_heads={self.num_heads} x head_dim={self.head_dim} != channels={self.channels}; "
           "leave num_heads unset (None) or make them agree")
    if self.num_heads is not None and self.deep_channels != self.channels:
      fail("num_heads with a different top_block_channels is not supported; leave num_heads "
           "unset (the deep block then has top_block_channels / head_dim heads)")
    if not self.rope:
      fail("rope=False (learned absolute position embedding) is not implemented; set rope=True")
    if not self.sos:
      fail("sos=False is not implemented (Jacobi decoding requires the start token); set sos=True")
    if self.norm_type not in ("layer_norm", "rms_norm"):
      fail(f"norm_type={self.norm_type!r} must be 'layer_norm' or 'rms_norm'")
    if self.seq_order not in ("L2R", "R2L"):
      fail(f"seq_order={self.seq_order!r} must be 'L2R' or 'R2L'")
    if self.temporal_causal > 0 and self.seq_order != "L2R":
      fail("seq_order must be 'L2R' when temporal_causal > 0 (frames go forward in time)")
    half = self.head_dim // 2
    if self.rope_layout == "3d" and (half <= 8 or (half - 8) % 2):
      fail(f"head_dim={self.head_dim} does not fit the 3D RoPE layout (head_dim/2 - 8 pairs must "
           "be positive and even); use head_dim = 4k with k >= 5, e.g. 32 or 64")
    if self.rope_layout == "2d" and half % 2:
      fail(f"head_dim={self.head_dim} does not fit the 2D RoPE layout; use a multiple of 4")
    if self.txt_dim > 0 and self.txt_size <= 0:
      fail(f"txt_dim={self.txt_dim} needs txt_size > 0 (the number of text tokens)")
    if self.txt_dim > 0 and self.num_classes > 0:
      fail("choose text (txt_dim > 0) or class labels (num_classes > 0), not both")
    if self.cond_top_only and self.conditioning is None:
      fail("cond_top_only=True needs a condition (txt_size/txt_dim or num_classes)")
    if self.conditional_denoiser and self.conditioning is None:
      fail("conditional_denoiser=True needs a condition (txt_dim or num_classes)")
    if self.compute_dtype not in ("float32", "bfloat16", "float16"):
      fail(f"compute_dtype={self.compute_dtype!r} must be float32, bfloat16 or float16")
    if self.attention_block_size is not None and self.attention_block_size < 1:
      fail(f"attention_block_size={self.attention_block_size} must be >= 1 (None: dense attention)")
    if self.num_actions < 0 or (self.num_actions and not self.is_video):
      fail(f"num_actions={self.num_actions}: per-frame actions need a video model (temporal_causal > 0), 0 or more")
    return self

  # ------------------------------------------------------------------ official kwargs
  _OURS = ("num_classes", "denoiser_layers", "compute_dtype", "remat", "expansion", "attention_block_size",
           "num_actions")

  @classmethod
  def from_official_kwargs(cls, kwargs: Mapping[str, Any], **overrides) -> "ModelConfig":
    """Builds a config from the official `Model(...)` keyword arguments (golden config.json)."""
    kwargs = dict(kwargs)
    if "model_kwargs" in kwargs:  # a whole golden config.json was passed
      kwargs = dict(kwargs["model_kwargs"])
    fields = {f.name for f in dataclasses.fields(cls)} - set(cls._OURS)
    values = {}
    for key, value in kwargs.items():
      if key in fields:
        values[key] = value
      elif key in _IGNORED_OFFICIAL_KWARGS:
        continue
      elif key in _FIXED_OFFICIAL_KWARGS:
        if value not in (_FIXED_OFFICIAL_KWARGS[key], 0, None, False):
          raise UserError(f"official option {key}={value!r} is not implemented by starflow_jax "
                          f"(only {key}={_FIXED_OFFICIAL_KWARGS[key]!r} is); cannot import it exactly")
      else:
        raise UserError(f"unknown official Model keyword argument {key!r}; expected one of "
                        f"{sorted(fields | set(_FIXED_OFFICIAL_KWARGS) | _IGNORED_OFFICIAL_KWARGS)}")
    if "rope" in values:
      values["rope"] = bool(values["rope"])
    values.update(overrides)
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [name for name in required if name not in values]
    if missing:
      raise UserError(f"the official Model keyword arguments lack {missing}; give every argument of "
                      "the official Model(...) (e.g. the model_kwargs of a golden config.json)")
    return cls(**values).validate()

  def to_official_kwargs(self) -> dict[str, Any]:
    """The official `Model(...)` keyword arguments for this architecture."""
    if self.num_classes > 0:
      raise UserError("class-label conditioning (num_classes > 0) has no official equivalent; "
                      "export a text-conditioned or unconditional model")
    if self.denoiser_layers != 8 and self.learnable_self_denoiser:
      raise UserError(f"denoiser_layers={self.denoiser_layers}: the official denoiser has 8 layers")
    if self.expansion != 4.0:
      raise UserError(f"expansion={self.expansion}: the official Model always uses MLP expansion 4")
    if self.num_actions:
      raise UserError(f"num_actions={self.num_actions}: action conditioning has no official equivalent; "
                      "export a model without actions")
    if self.shallow_block_local and not self.cond_top_only and self.conditioning is not None:
      raise UserError("frame-local shallow blocks that read the condition (shallow_block_local with "
                      "cond_top_only=False) have no official equivalent; export a model with cond_top_only=True")
    out = {}
    for f in dataclasses.fields(self):
      if f.name in self._OURS:
        continue
      value = getattr(self, f.name)
      out[f.name] = list(value) if isinstance(value, tuple) else value
    return out

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in dataclasses.fields(self)}

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> "ModelConfig":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
      raise UserError(f"unknown model config fields {sorted(unknown)}; known: {sorted(known)}")
    return cls(**dict(values)).validate()
