"""The model's inverse (noise -> latents), the counterpart of `model.forward`.

  z -> patchify -> deep block^-1 -> shallow block K-2 ^-1 -> ... -> shallow block 0 ^-1 -> x.

Each block is inverted by a `BlockInverse` (`decoding.sequential_inverse`, or
`jacobi.jacobi_inverse` with its options), both built from the pieces in `decoding`. The rules
made here, once, for `invert` and for `sampling.VideoSampler` (which schedules the same pieces
frame by frame):
  * guidance (`guided_condition`): with guidance > 0 and a condition, the deep block decodes a
    doubled batch [cond; null] (null: `null_cond`, else `model.null_condition`) with the guided
    affine parameters; an action-conditioned model's actions are guided the same way, against
    the null action;
  * shallow blocks (`shallow_inverse`) are conditioned only when cond_top_only=False, and then
    guided with the deep block's doubled condition, as the official sampler does (frame-local
    ones with each frame's copy of it: `model.shallow_condition`);
  * conditioning frames (`prefix`, latents of the first Tp frames): run forward to the deep
    block's input, prefilled as its first tokens, and returned unchanged.
"""

from __future__ import annotations

import functools
from typing import Protocol, Sequence

import jax
import jax.numpy as jnp

from starflow_jax import decoding, jacobi, layers, model as model_lib, tokens
from starflow_jax.config import ModelConfig
from starflow_jax.flow import FlowBlock
from starflow_jax.jacobi import JacobiOptions
from starflow_jax.rope import TokenGrid

Array = jnp.ndarray


class BlockInverse(Protocol):

  def __call__(self,
               block: FlowBlock,
               params,
               z: Array,
               grid: TokenGrid,
               cond: Array | None,
               guidance: float,
               given: Array | None = None,
               actions: Array | None = None) -> Array:
    ...


def block_inverse_for(options: JacobiOptions | None) -> BlockInverse:
  """Token-by-token decoding (None) or block-wise Jacobi with `options`."""
  if options is None:
    return decoding.sequential_inverse
  return functools.partial(jacobi.jacobi_inverse, options=options)


def guided_condition(config: ModelConfig,
                     cond: Array | None,
                     null_cond: Array | None,
                     guidance: float,
                     stored_null: Array | None = None) -> tuple[Array | None, float]:
  """(the deep block's condition, its guidance): [cond; null] [2B, ...] and `guidance` when
  guided, else (cond, 0.0). null: `null_cond`, else `model.null_condition` (with the model's
  stored null, if any). An action-conditioned model is guided on its actions too: without a
  condition, (None, guidance), the decoders doubling the batch as [actions; null action]
  (`decoding.guided_actions`)."""
  if guidance <= 0 or (cond is None and not config.num_actions):
    return cond, 0.0
  if cond is None:
    return None, guidance
  null = model_lib.null_condition(config, cond, stored_null) if null_cond is None else null_cond
  return jnp.concatenate([cond, null], axis=0), guidance


def shallow_inverse(config: ModelConfig,
                    params,
                    h: Array,
                    grid: TokenGrid,
                    deep_cond: Array | None,
                    guidance: float,
                    block_inverses: Sequence[BlockInverse],
                    guide_top: bool = False,
                    return_sequence: bool = False):
  """The shallow blocks' inverses in reverse order on the deep block's output h [B, T, N, D]
  (`grid` its T frames; one frame at a time for a frame-by-frame scheduler). `deep_cond` and
  `guidance` as returned by `guided_condition`. guide_top: guidance in the deep block only (the
  official `guide_top`: conditioned shallow blocks then see the condition unguided).
  block_inverses: shallow block i's inverse at index i.
  return_sequence: (h, [h after each shallow block]) instead of h (the official return_sequence)."""
  b, t, n, d = h.shape
  shallow_cond, shallow_guidance = shallow_condition(config, deep_cond, guidance, b, t, guide_top)
  s_grid = model_lib.shallow_grid(config, grid)
  sequence = []
  for i in reversed(range(config.num_blocks - 1)):
    h_in = model_lib.to_shallow_batch(config, h)
    h = block_inverses[i](model_lib.shallow_block(config, i), model_lib.shallow_params(params, i), h_in, s_grid,
                          shallow_cond, shallow_guidance)
    h = h.reshape(b, t, n, d)
    sequence.append(h)
  return (h, sequence) if return_sequence else h


def shallow_condition(config: ModelConfig,
                      deep_cond: Array | None,
                      guidance: float,
                      batch: int,
                      num_frames: int,
                      guide_top: bool = False) -> tuple[Array | None, float]:
  """(condition, guidance) of the shallow blocks from the deep block's (`guided_condition`) for
  a batch of `batch` clips of `num_frames` frames: none for cond_top_only models; unguided under
  guide_top; per frame for frame-local blocks (`model.shallow_condition`: the doubled batch
  [cond; null] becomes [cond per frame; null per frame], as the decoders double [h; h])."""
  if config.cond_top_only or deep_cond is None:
    return None, 0.0
  if guide_top and guidance > 0:
    deep_cond, guidance = deep_cond[:batch], 0.0
  return model_lib.shallow_condition(config, deep_cond, num_frames), guidance


def prefix_tokens(config: ModelConfig, params, prefix: Array, cond: Array | None) -> Array:
  """The deep block's input tokens [B, Tp, N, D] for given latent frames [B, Tp, H, W, C]."""
  return model_lib.StarFlow(config).apply({"params": params}, prefix, cond, method=model_lib.StarFlow.deep_input)


def invert(config: ModelConfig,
           params,
           z: Array,
           cond: Array | None = None,
           *,
           guidance: float = 0.0,
           null_cond: Array | None = None,
           block_inverse: BlockInverse = decoding.sequential_inverse,
           prefix: Array | None = None,
           guide_top: bool = False,
           attn_temp: float = 1.0,
           actions: Array | None = None) -> Array:
  """Noise z (latent layout [B, H, W, C] or [B, T, H, W, C]) -> latents x, inverting every block.

  prefix: latents of the first Tp frames [B, Tp, H, W, C] (image-to-video, continuation), kept.
  guide_top: guidance in the deep block only. attn_temp: softmax temperature of every attention
  of the inversion (not of the prefix's forward pass), as the official --attn_temp.
  actions: per-frame ids [B, T] of an action-conditioned model (read by the deep block; guided
  with the null action in the doubled batch).
  Jit it with `config`, `guidance`, `block_inverse`, `guide_top` and `attn_temp` static
  (`sample_sequential`, `sample_jacobi`).
  """
  video, is_image = tokens.as_video(z)
  z_tok, grid = tokens.patchify(video, config.patch_size)  # [B, T, N, D]
  b, t, n, d = z_tok.shape
  deep_cond, deep_guidance = guided_condition(config, cond, null_cond, guidance)
  given = None
  if prefix is not None:
    given = prefix_tokens(config, params, prefix, cond).reshape(b, -1, d)  # [B, Tp*N, D]
  with layers.attention_temperature(attn_temp):
    h = _invert_tokens(config, params, z_tok, grid, deep_cond, deep_guidance, block_inverse, given, guide_top, actions)
  x = tokens.unpatchify(h, grid, config.patch_size)
  if prefix is not None:
    x = x.at[:, :prefix.shape[1]].set(prefix)
  return x[:, 0] if is_image else x


def _invert_tokens(config, params, z_tok, grid, deep_cond, deep_guidance, block_inverse, given, guide_top, actions):
  """The deep block's inverse, then the shallow blocks': noise tokens [B, T, N, D] -> tokens."""
  b, t, n, d = z_tok.shape
  with_actions = {} if actions is None else {"actions": actions}
  h = block_inverse(model_lib.deep_block(config),
                    model_lib.deep_params(params),
                    z_tok.reshape(b, t * n, d),
                    grid,
                    deep_cond,
                    deep_guidance,
                    given=given,
                    **with_actions)
  return shallow_inverse(config, params, h.reshape(b, t, n, d), grid, deep_cond, deep_guidance,
                         (block_inverse,) * (config.num_blocks - 1), guide_top)


def block_iterations(config: ModelConfig,
                     params,
                     z_tok: Array,
                     grid: TokenGrid,
                     deep_cond: Array | None,
                     deep_guidance: float,
                     options: JacobiOptions,
                     guide_top: bool = False,
                     actions: Array | None = None) -> list[Array]:
  """The Jacobi iterations of every block of every flow block when the model's inverse (the
  same `_invert_tokens`) decodes noise tokens z_tok [B, T, N, D] with `options`: [deep, shallow
  K-2, ..., shallow 0], each int32 [its Jacobi blocks]. Conditions as from `guided_condition`."""
  record = []

  def recording(block, params, z, grid, cond, guidance, given=None, actions=None):
    x, its = jacobi.jacobi_inverse(block, params, z, grid, cond, guidance, given, options, True, actions)
    record.append(its)
    return x

  _invert_tokens(config, params, z_tok, grid, deep_cond, deep_guidance, recording, None, guide_top, actions)
  return record


@functools.partial(jax.jit, static_argnames=("config", "guidance", "guide_top", "attn_temp"))
def sample_sequential(config: ModelConfig,
                      params,
                      z: Array,
                      cond: Array | None = None,
                      guidance: float = 0.0,
                      null_cond: Array | None = None,
                      prefix: Array | None = None,
                      guide_top: bool = False,
                      attn_temp: float = 1.0) -> Array:
  """Compiled `invert` with token-by-token decoding of every block."""
  return invert(config,
                params,
                z,
                cond,
                guidance=guidance,
                null_cond=null_cond,
                prefix=prefix,
                guide_top=guide_top,
                attn_temp=attn_temp)


@functools.partial(jax.jit,
                   static_argnames=("config", "guidance", "block_size", "threshold", "max_iter", "later_block_size",
                                    "video_init", "reference_compatible", "guide_top", "attn_temp"))
def sample_jacobi(config: ModelConfig,
                  params,
                  z: Array,
                  cond: Array | None = None,
                  *,
                  guidance: float = 0.0,
                  null_cond: Array | None = None,
                  prefix: Array | None = None,
                  block_size: int = 64,
                  threshold: float = 1e-3,
                  max_iter: int = 32,
                  later_block_size: int | None = None,
                  video_init: bool = True,
                  reference_compatible: bool | None = None,
                  guide_top: bool = False,
                  attn_temp: float = 1.0) -> Array:
  """Compiled `invert` with Jacobi decoding of every block (the official `jacobi=True`).

  reference_compatible defaults to True here so results match the official sampler.
  """
  options = JacobiOptions(block_size=block_size,
                          later_block_size=later_block_size,
                          threshold=threshold,
                          max_iter=max_iter,
                          video_init=video_init,
                          reference_compatible=True if reference_compatible is None else reference_compatible)
  return invert(config,
                params,
                z,
                cond,
                guidance=guidance,
                null_cond=null_cond,
                prefix=prefix,
                block_inverse=block_inverse_for(options),
                guide_top=guide_top,
                attn_temp=attn_temp)
