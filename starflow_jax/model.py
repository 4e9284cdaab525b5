"""STARFlow / STARFlow-V: patchify, K-1 shallow flow blocks, one deep flow block, the denoiser.

Forward (data -> noise, training and likelihood):
  x -> patchify -> shallow_block_0 -> ... -> shallow_block_{K-2} -> u -> deep_block -> z.
For video with `shallow_block_local`, shallow blocks run on each frame alone ([B*T, N, D]); the
deep block is one causal sequence over all T*N tokens with the condition prefix. Sampling runs the
other way (see `decoding` and `jacobi`).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from starflow_jax import losses, tokens
from starflow_jax.config import ModelConfig
from starflow_jax.denoiser import Denoiser
from starflow_jax.flow import FlowBlock
from starflow_jax.rope import TokenGrid

Array = jnp.ndarray

# The parameter tree's top-level keys: named here only (use the accessors below elsewhere).
DEEP_BLOCK = "deep_block"
DENOISER = "denoiser"
_SHALLOW_BLOCK = "shallow_block_{}"


def shallow_block_key(index: int) -> str:
  """The parameter key of shallow block `index` (0-based, forward order)."""
  return _SHALLOW_BLOCK.format(index)


def deep_params(params):
  """The deep block's parameters."""
  return params[DEEP_BLOCK]


def shallow_params(params, index: int):
  """Shallow block `index`'s parameters (None for a block without layers)."""
  return params.get(shallow_block_key(index))


def denoiser_params(params):
  """The denoiser's parameters."""
  return params[DENOISER]


def with_denoiser_params(params, denoiser):
  """A shallow copy of `params` with the denoiser's parameters replaced."""
  return {**params, DENOISER: denoiser}


def has_denoiser(params) -> bool:
  return DENOISER in params


def split_denoiser_params(params):
  """(params without the denoiser, the denoiser's params or None)."""
  rest = dict(params)
  return rest, rest.pop(DENOISER, None)


def is_denoiser_path(path) -> bool:
  """Whether a key path of the model's parameters (or of a tree holding them) is the denoiser's."""
  return any(getattr(k, "key", getattr(k, "name", None)) == DENOISER for k in path)


def block_key_kind(key: str) -> tuple[str, int | None]:
  """('deep', None), ('denoiser', None) or ('shallow', index) for a top-level parameter key."""
  if key == DEEP_BLOCK:
    return "deep", None
  if key == DENOISER:
    return "denoiser", None
  prefix = _SHALLOW_BLOCK.format("")
  if key.startswith(prefix) and key[len(prefix):].isdigit():
    return "shallow", int(key[len(prefix):])
  raise ValueError(f"unexpected top-level parameter group {key!r}")


def null_condition(config: ModelConfig, cond: Array, stored: Array | None = None) -> Array:
  """The unconditional ("null") condition of the shape of `cond`, by the one rule used by
  training (condition dropout), `inverse.invert` and the sampler:
    * class models: label `num_classes`;
    * text models with a stored null (`stored`, [L, txt_dim] or [1, L, txt_dim]: the frozen
      text encoder's empty prompt, kept in the model directory): that, for every example;
    * other text models: zeros (the official default for embeddings). Models with the built-in
      text encoder are trained on the empty caption's tokens; the sampler encodes "" for them.
  """
  if config.conditioning == "class":
    return jnp.full_like(cond, config.num_classes)
  if stored is not None:
    return jnp.broadcast_to(jnp.asarray(stored, cond.dtype).reshape(cond.shape[1:]), cond.shape)
  return jnp.zeros_like(cond)


@flax.struct.dataclass
class FlowOutput:
  """Result of the forward map.

  z: the noise, same layout as the input latents.
  logdets: per block (deep last), -log(scale) per element in that block's token order:
    shallow video blocks [B, T, N, D], the deep block and image blocks [B, T*N, D].
  outputs: token tensors [B, T, N, D]: the patchified input, then the state after each block.
  """

  z: Array
  logdets: tuple[Array, ...]
  outputs: tuple[Array, ...]


def _flow_block(config: ModelConfig,
                index: int,
                width: int,
                conditioning: str | None,
                num_actions: int = 0) -> FlowBlock:
  """Flow block `index` of the model (0-based, in forward order) at `width`."""
  return FlowBlock(token_dim=config.token_dim,
                   width=width,
                   num_layers=config.block_layers[index],
                   head_dim=config.head_dim,
                   order=config.block_permutation(index),
                   pt_seq_len=config.rope_seq_len,
                   rope_layout=config.rope_layout,
                   conditioning=conditioning,
                   txt_dim=config.txt_dim,
                   num_classes=config.num_classes,
                   soft_clip=config.soft_clip,
                   use_softplus=config.use_softplus,
                   use_final_norm=config.use_final_norm,
                   norm_type=config.norm_type,
                   use_bias=config.use_bias,
                   expansion=config.expansion,
                   dtype=config.dtype,
                   remat=config.remat,
                   attention_block_size=config.attention_block_size,
                   num_actions=num_actions)


def shallow_block(config: ModelConfig, index: int) -> FlowBlock:
  """Shallow block `index` (0-based, applied in this order in the forward map)."""
  return _flow_block(config, index, config.channels, None if config.cond_top_only else config.conditioning)


def deep_block(config: ModelConfig) -> FlowBlock:
  """The deep (global, causal across frames, conditioned) block: the last one; the only one
  that reads per-frame actions."""
  return _flow_block(config, config.num_blocks - 1, config.deep_channels, config.conditioning, config.num_actions)


def shallow_blocks(config: ModelConfig) -> tuple[FlowBlock, ...]:
  """The shallow blocks in forward order."""
  return tuple(shallow_block(config, i) for i in range(config.num_blocks - 1))


def denoiser(config: ModelConfig) -> Denoiser:
  return Denoiser(token_dim=config.token_dim,
                  width=config.channels,
                  num_layers=config.denoiser_layers,
                  head_dim=config.head_dim,
                  pt_seq_len=config.rope_seq_len,
                  rope_layout=config.rope_layout,
                  conditioning=config.conditioning if config.conditional_denoiser else None,
                  num_classes=config.num_classes,
                  lookahead=config.temporal_causal,
                  window=config.denoiser_window,
                  use_final_norm=config.use_final_norm,
                  norm_type=config.norm_type,
                  use_bias=config.use_bias,
                  expansion=config.expansion,
                  dtype=config.dtype,
                  remat=config.remat,
                  attention_block_size=config.attention_block_size)


def shallow_grid(config: ModelConfig, grid: TokenGrid) -> TokenGrid:
  """Token grid a shallow block sees: one frame when shallow blocks are frame-local."""
  if config.shallow_block_local:
    return TokenGrid(1, grid.height, grid.width)
  return grid


def to_shallow_batch(config: ModelConfig, x: Array) -> Array:
  """Tokens [B, T, N, D] -> the shallow blocks' batch: [B*T, N, D] if local, else [B, T*N, D]."""
  b, t, n, d = x.shape
  if config.shallow_block_local:
    return x.reshape(b * t, n, d)
  return x.reshape(b, t * n, d)


def shallow_condition(config: ModelConfig, cond: Array | None, num_frames: int) -> Array | None:
  """The shallow blocks' condition for clips with the condition `cond` [B, ...] and `num_frames`
  frames: None under cond_top_only; frame-local blocks see each frame as a clip of its own, so
  each frame gets its clip's condition ([B*T, ...], the order of `to_shallow_batch`)."""
  if config.cond_top_only or cond is None:
    return None
  return jnp.repeat(cond, num_frames, axis=0) if config.shallow_block_local else cond


def token_nll(config: ModelConfig, output: "FlowOutput", num_frames: int) -> Array:
  """Each token's share of the exact NLL in nats, [B, T, N] in raster order: its elements'
  0.5 z^2 + log sqrt(2 pi) and its -log(scale) in every block, each block's log-dets taken back
  from that block's token order. Summed over a frame's tokens it is `losses.frame_nll`."""
  z = output.z if output.z.ndim == 5 else output.z[:, None]
  z_tok, grid = tokens.patchify(z.astype(jnp.float32), config.patch_size)  # [B, T, N, D]
  b, t, n, d = z_tok.shape
  total = jnp.sum(0.5 * jnp.square(z_tok) + losses.HALF_LOG_2PI, axis=-1)
  for index, logdet in enumerate(output.logdets):
    frame_local = index < config.num_blocks - 1 and config.shallow_block_local and num_frames > 1
    per_block = logdet.astype(jnp.float32).reshape(b * t, n, d) if frame_local else logdet.astype(jnp.float32).reshape(
        b, t * n, d)
    total = total - jnp.sum(tokens.unpermute(per_block, config.block_permutation(index), n).reshape(b, t, n, d),
                            axis=-1)
  return total


class StarFlow(nn.Module):
  """The whole model. Latents are channels-last: [B, H, W, C] or [B, T, H, W, C].

  `cond` is text embeddings [B, L, txt_dim], class labels [B] (int; num_classes = null), or None.
  """

  config: ModelConfig

  def setup(self):
    cfg = self.config
    # These attribute names are the parameter keys above (shallow_block_{i}, deep_block, denoiser).
    self.shallow_block = list(shallow_blocks(cfg))
    self.deep_block = deep_block(cfg)
    if cfg.learnable_self_denoiser:
      self.denoiser = denoiser(cfg)

  def __call__(self, x: Array, cond: Array | None = None, actions: Array | None = None) -> FlowOutput:
    """The forward map data -> noise with every block's log-det (for the loss and likelihood).
    actions: per-frame ids [B, T] for action-conditioned models (None: the null action)."""
    cfg = self.config
    video, is_image = tokens.as_video(x)
    x_tok, grid = tokens.patchify(video, cfg.patch_size)  # [B, T, N, D]
    b, t, n, d = x_tok.shape
    h, logdets, outputs = self._shallow_forward(x_tok, grid, cond, is_image)
    z_tok, logdet = self.deep_block(h.reshape(b, t * n, d), grid, cond, actions)
    z_tok = z_tok.reshape(b, t, n, d)
    z = tokens.unpatchify(z_tok, grid, cfg.patch_size)
    return FlowOutput(z=z[:, 0] if is_image else z, logdets=logdets + (logdet,), outputs=outputs + (z_tok,))

  def deep_input(self, x: Array, cond: Array | None = None) -> Array:
    """The deep block's input tokens [B, T, N, D] for latents x: the shallow blocks' forward only
    (given frames to prefill before decoding the rest)."""
    video, is_image = tokens.as_video(x)
    x_tok, grid = tokens.patchify(video, self.config.patch_size)
    return self._shallow_forward(x_tok, grid, cond, is_image)[0]

  def _shallow_forward(self, x_tok: Array, grid: TokenGrid, cond: Array | None, is_image: bool):
    """(tokens after the shallow blocks [B, T, N, D], their log-dets, the token states)."""
    cfg = self.config
    b, t, n, d = x_tok.shape
    outputs, logdets = [x_tok], []
    h = x_tok
    s_grid = shallow_grid(cfg, grid)
    shallow_cond = shallow_condition(cfg, cond, 1 if is_image else t)
    for block in self.shallow_block:
      h_in = to_shallow_batch(cfg, h)
      h_out, logdet = block(h_in, s_grid, shallow_cond)
      h = h_out.reshape(b, t, n, d)
      if cfg.shallow_block_local and not is_image:
        logdet = logdet.reshape(b, t, n, d)
      elif not cfg.shallow_block_local:
        logdet = logdet.reshape(b, t * n, d)
      logdets.append(logdet)
      outputs.append(h)
    return h, tuple(logdets), tuple(outputs)

  def denoise(self, x: Array, cond: Array | None = None) -> Array:
    """The denoiser network s_phi on noisy latents x (same layout as x): the official
    `model(x, y, denoiser=True)`. Sampling applies x - step * s_phi(x)."""
    if not self.config.learnable_self_denoiser:
      raise ValueError("this model has no denoiser; set learnable_self_denoiser=True in the config")
    cfg = self.config
    video, is_image = tokens.as_video(x)
    x_tok, grid = tokens.patchify(video, cfg.patch_size)
    b, t, n, d = x_tok.shape
    out = self.denoiser(x_tok.reshape(b, t * n, d), grid, cond)
    out = tokens.unpatchify(out.reshape(b, t, n, d), grid, cfg.patch_size)
    return out[:, 0] if is_image else out

  def init_all(self, x: Array, cond: Array | None = None):
    """Touches every submodule (flow and denoiser) so `init` creates all parameters."""
    out = self(x, cond)
    if self.config.learnable_self_denoiser:
      self.denoise(x, cond)
    return out


def init_params(config: ModelConfig, rng, batch: int = 1, num_frames: int | None = None):
  """Initialises all parameters (flow blocks and denoiser) for `config`; returns the params dict.

  Parameter shapes do not depend on the example batch or frame count; init runs compiled.
  """
  return nn.unbox(init_variables(config, rng, batch, num_frames)["params"])


def init_variables(config: ModelConfig, rng, batch: int = 1, num_frames: int | None = None):
  """Boxed variables (with logical partitioning metadata) of a freshly initialised model."""
  x = example_latents(config, batch, num_frames)
  cond = example_condition(config, batch)
  return _compiled_init(config)(rng, x, cond)


@functools.lru_cache(maxsize=32)
def _compiled_init(config: ModelConfig):
  return jax.jit(functools.partial(StarFlow(config).init, method=StarFlow.init_all))


@functools.partial(jax.jit, static_argnames=("config",))
def forward(config: ModelConfig,
            params,
            x: Array,
            cond: Array | None = None,
            actions: Array | None = None) -> FlowOutput:
  """Compiled forward map (data -> noise with log-dets): StarFlow(config).apply."""
  return StarFlow(config).apply({"params": params}, x, cond, actions)


@functools.partial(jax.jit, static_argnames=("config",))
def denoise(config: ModelConfig, params, x: Array, cond: Array | None = None) -> Array:
  """Compiled denoiser network s_phi(x)."""
  return StarFlow(config).apply({"params": params}, x, cond, method=StarFlow.denoise)


def example_latents(config: ModelConfig, batch: int = 1, num_frames: int | None = None) -> Array:
  """Zeros of the training latent shape: [B, T, S, S, C] for video models, else [B, S, S, C]."""
  side = config.img_size
  if config.is_video:
    return jnp.zeros((batch, num_frames or 2, side, side, config.in_channels), jnp.float32)
  return jnp.zeros((batch, side, side, config.in_channels), jnp.float32)


def example_condition(config: ModelConfig, batch: int = 1) -> Array | None:
  if config.conditioning == "text":
    return jnp.zeros((batch, config.txt_size, config.txt_dim), jnp.float32)
  if config.conditioning == "class":
    return jnp.zeros((batch,), jnp.int32)
  return None
