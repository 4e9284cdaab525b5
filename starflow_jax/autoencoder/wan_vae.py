"""The WAN 2.1 / 2.2 causal video VAE in Flax, loading diffusers `AutoencoderKLWan` checkpoints.

STARFlow-V models video in WAN 2.2's latent space (ALGORITHM.md section 9): 16x spatial (a 2x2
pixel patchify then three 2x stages), 4x temporal, 48 channels. WAN 2.1's VAE (8x, 4x, 16
channels, no patchify, plain down/up blocks) shares the code. Tensors are channels-last,
videos [B, T, H, W, C] in [-1, 1] with T = 1 + 4k; latents [B, 1 + k, H/s, W/s, z].

Every temporal operation is causal, so the model can run over a video in chunks of frames with a
feature cache, exactly as diffusers does it, and memory stays flat however long the video is:
- a temporal 3x3x3 convolution sees the two input frames before its chunk (kept in the flax
  'cache' collection; zeros at the start of the video, which is the zero causal padding);
- temporal downsampling (encoder) passes the video's first chunk (frame 0) through and merges
  later frames with a stride-2 temporal convolution over [last frame of the previous chunk, chunk];
- temporal upsampling (decoder) passes the first chunk through and doubles later frames with a
  causal temporal convolution whose past starts after frame 0 (diffusers' "Rep" cache);
- WAN 2.2's parameter-free shortcuts average (AvgDown3D) or duplicate (DupUp3D) pixels into / out
  of channels, with the first chunk's odd frame handled as diffusers does.
Chunking is therefore exact: one chunk per frame group (diffusers), or any larger chunk, gives the
same latents and pixels (tested). The first chunk is frame 0 alone (encoder) or latent frame 0
alone (decoder); later chunks hold any multiple of 4 frames / any number of latent frames.

Parameters load from a diffusers directory (`config.json` + `diffusion_pytorch_model.safetensors`,
or a sharded index, or the pipeline root with a `vae/` folder) by name: our module paths mirror
diffusers' (`encoder/down_blocks_0/resnets_1/conv1/kernel` <- `encoder.down_blocks.0.resnets.1.
conv1.weight`), and a missing, unused or mis-shaped weight is an error that names it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from starflow_jax import fileio, sharding
from starflow_jax.autoencoder import causal_vae
from starflow_jax.errors import UserError
from starflow_jax.interop.state_dict_io import read_hf_directory, write_safetensors

Array = jnp.ndarray
CONV_DIMS = ("NDHWC", "DHWIO", "NDHWC")


@dataclasses.dataclass(frozen=True)
class WanVAEConfig:
  """diffusers `AutoencoderKLWan` config fields (the names are diffusers', typos included)."""

  base_dim: int = 96
  decoder_base_dim: int | None = None
  z_dim: int = 16
  dim_mult: tuple[int, ...] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  attn_scales: tuple[float, ...] = ()
  temperal_downsample: tuple[bool, ...] = (False, True, True)
  is_residual: bool = False  # WAN 2.2: residual down/up blocks with parameter-free shortcuts
  in_channels: int = 3
  out_channels: int = 3
  patch_size: int | None = None  # WAN 2.2: 2 (pixels are patchified to 12 channels first)
  latents_mean: tuple[float, ...] = ()
  latents_std: tuple[float, ...] = ()

  def __post_init__(self):
    for name in ("dim_mult", "attn_scales", "temperal_downsample", "latents_mean", "latents_std"):
      object.__setattr__(self, name, tuple(getattr(self, name)))
    if len(self.temperal_downsample) != len(self.dim_mult) - 1:
      raise UserError(f"temperal_downsample needs {len(self.dim_mult) - 1} entries (one per "
                      f"downsampling stage of dim_mult={self.dim_mult}), got {self.temperal_downsample}")
    for name in ("latents_mean", "latents_std"):
      if getattr(self, name) and len(getattr(self, name)) != self.z_dim:
        raise UserError(f"{name} has {len(getattr(self, name))} entries for z_dim={self.z_dim}")

  @classmethod
  def from_diffusers(cls, values: dict) -> "WanVAEConfig":
    fields = {f.name for f in dataclasses.fields(cls)}
    config = cls(**{k: v for k, v in values.items() if k in fields})
    for key, ours in (("scale_factor_spatial", config.spatial_factor), ("scale_factor_temporal",
                                                                        config.temporal_factor)):
      if values.get(key) not in (None, ours):
        raise UserError(f"config.json says {key}={values[key]} but its blocks compress by {ours}")
    return config

  @property
  def decoder_dim(self) -> int:
    return self.decoder_base_dim or self.base_dim

  @property
  def spatial_factor(self) -> int:
    return 2**(len(self.dim_mult) - 1) * (self.patch_size or 1)

  @property
  def temporal_factor(self) -> int:
    return 2**sum(bool(t) for t in self.temperal_downsample)

  @property
  def video_channels(self) -> int:  # colour channels of the videos (in_channels counts patchified ones)
    return self.in_channels // (self.patch_size or 1)**2


# ---------------------------------------------------------------------------------------------
# Layers. `first` (static) says the chunk starts the video: caches start from zeros.


def _past_and_chunk(module: nn.Module, name: str, x: Array, frames: int, first: bool) -> Array:
  """[B, frames + T, ...]: the `frames` input frames before this chunk (kept in the 'cache'
  collection from the previous chunk; zeros at the start of the video), then the chunk; stores
  the last `frames` frames for the next chunk."""
  cache = module.variable("cache", name, jnp.zeros, (x.shape[0], frames) + x.shape[2:], x.dtype)
  past = jnp.zeros_like(cache.value) if first else cache.value
  full = jnp.concatenate([past, x], axis=1)
  cache.value = full[:, -frames:]
  return full


def _conv3d(x: Array, kernel: Array, bias: Array, time_stride: int, spatial_padding: int, dtype) -> Array:
  """torch Conv3d over [B, T, H, W, C]: VALID in time (callers prepend past frames), zero-padded
  in space; kernel [kt, kh, kw, in, out]."""
  p = spatial_padding
  y = lax.conv_general_dilated(x.astype(dtype),
                               kernel.astype(dtype), (time_stride, 1, 1), ((0, 0), (p, p), (p, p)),
                               dimension_numbers=CONV_DIMS)
  return y + bias.astype(dtype)


class Conv3d(nn.Module):
  """A temporal convolution with kernel (kt, 1, 1) over frames the caller assembled."""

  features: int
  kernel_size: tuple[int, int, int]
  time_stride: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param("kernel", nn.initializers.lecun_normal(), self.kernel_size + (x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    return _conv3d(x, kernel, bias, self.time_stride, 0, self.dtype)


class CausalConv3d(nn.Module):
  """diffusers WanCausalConv3d (kernel k^3, 'same' in space), causal in time through the cache:
  the k - 1 frames before the chunk are the previous chunk's last inputs (zeros at the start)."""

  features: int
  kernel: int = 3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, first: bool) -> Array:
    k = self.kernel
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, k, x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    if k > 1 and first and x.shape[1] == 1:
      # The video's first frame: its past is zeros, so only the last temporal tap sees data. Same
      # result as convolving [0, 0, x], at a third of the cost (and XLA's CPU backend runs the
      # zero-padded form of small convolutions with a slow kernel-as-input algorithm: the first
      # decoder chunk of the WAN 2.2 VAE took 5.8 s instead of 0.73 s).
      _past_and_chunk(self, "past", x, k - 1, first)  # the cache for the next chunk: [0, x]
      return _conv3d(x, kernel[k - 1:], bias, 1, k // 2, self.dtype)
    if k > 1:
      x = _past_and_chunk(self, "past", x, k - 1, first)  # [B, k-1+T, H, W, C]
    return _conv3d(x, kernel, bias, 1, k // 2, self.dtype)


class FrameConv2d(nn.Module):
  """torch Conv2d applied to every frame: kernel [kh, kw, in, out]."""

  features: int
  kernel: int = 3
  stride: int = 1
  padding: tuple[tuple[int, int], tuple[int, int]] = ((1, 1), (1, 1))
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:  # [B, T, H, W, C]
    b, t = x.shape[:2]
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (self.kernel, self.kernel, x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    frames = x.reshape((b * t,) + x.shape[2:]).astype(self.dtype)  # [B*T, H, W, C]
    y = lax.conv_general_dilated(frames,
                                 kernel.astype(self.dtype), (self.stride, self.stride),
                                 self.padding,
                                 dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias.astype(self.dtype)
    return y.reshape((b, t) + y.shape[1:])


class RMSNorm(nn.Module):
  """diffusers WanRMS_norm: x / ||x||_channels * sqrt(C) * gamma (F.normalize, eps 1e-12), float32."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    gamma = self.param("gamma", nn.initializers.ones, (x.shape[-1],))
    x32 = x.astype(jnp.float32)
    norm = jnp.maximum(jnp.sqrt(jnp.sum(jnp.square(x32), axis=-1, keepdims=True)), 1e-12)
    return (x32 / norm * math.sqrt(x.shape[-1]) * gamma).astype(x.dtype)


class ResidualBlock(nn.Module):
  out_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, first: bool) -> Array:
    if x.shape[-1] != self.out_dim:
      shortcut = CausalConv3d(self.out_dim, kernel=1, dtype=self.dtype, name="conv_shortcut")(x, first)
    else:
      shortcut = x
    h = nn.silu(RMSNorm(name="norm1")(x))
    h = CausalConv3d(self.out_dim, dtype=self.dtype, name="conv1")(h, first)
    h = nn.silu(RMSNorm(name="norm2")(h))
    h = CausalConv3d(self.out_dim, dtype=self.dtype, name="conv2")(h, first)
    return h + shortcut


class AttentionBlock(nn.Module):
  """Single-head self-attention over each frame's pixels (no attention across frames)."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:  # [B, T, H, W, C]
    b, t, h, w, c = x.shape
    qkv = FrameConv2d(3 * c, kernel=1, padding=((0, 0), (0, 0)), dtype=self.dtype,
                      name="to_qkv")(RMSNorm(name="norm")(x))
    q, k, v = jnp.split(qkv.reshape(b * t, h * w, 3 * c), 3, axis=-1)  # [B*T, HW, C] each
    logits = jnp.einsum("bqc,bkc->bqk", q, k).astype(jnp.float32) / math.sqrt(c)
    out = jnp.einsum("bqk,bkc->bqc", jax.nn.softmax(logits, axis=-1).astype(v.dtype), v)
    out = FrameConv2d(c, kernel=1, padding=((0, 0), (0, 0)), dtype=self.dtype, name="proj")(out.reshape(b, t, h, w, c))
    return out + x


class MidBlock(nn.Module):
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, first: bool) -> Array:
    dim = x.shape[-1]
    x = ResidualBlock(dim, self.dtype, name="resnets_0")(x, first)
    x = AttentionBlock(self.dtype, name="attentions_0")(x)
    return ResidualBlock(dim, self.dtype, name="resnets_1")(x, first)


def _upsample_nearest2x(x: Array) -> Array:  # [B, T, H, W, C] -> [B, T, 2H, 2W, C]
  return jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)


class Resample(nn.Module):
  """diffusers WanResample: 'upsample2d' | 'upsample3d' | 'downsample2d' | 'downsample3d'."""

  mode: str
  out_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, first: bool) -> Array:
    dim = x.shape[-1]
    if self.mode == "upsample3d":
      # Doubles frames after the first: frame t (t >= 1) -> 2 frames from one causal temporal conv
      # whose past starts after frame 0 (the first chunk passes through and leaves a zero cache).
      if first:  # diffusers' "Rep" cache: the next chunk's past is zeros, not frame 0
        shape = (x.shape[0], 2) + x.shape[2:]
        self.variable("cache", "time_past", jnp.zeros, shape, x.dtype).value = jnp.zeros(shape, x.dtype)
      else:
        full = _past_and_chunk(self, "time_past", x, 2, first=False)
        y = Conv3d(2 * dim, (3, 1, 1), dtype=self.dtype, name="time_conv")(full)  # [B, T, H, W, 2C]
        b, t, h, w, _ = y.shape
        x = y.reshape(b, t, h, w, 2, dim).transpose(0, 1, 4, 2, 3, 5).reshape(b, 2 * t, h, w, dim)
    if self.mode.startswith("upsample"):
      x = FrameConv2d(self.out_dim, dtype=self.dtype, name="resample_1")(_upsample_nearest2x(x))
    elif self.mode.startswith("downsample"):
      x = FrameConv2d(dim, stride=2, padding=((0, 1), (0, 1)), dtype=self.dtype, name="resample_1")(x)
    if self.mode == "downsample3d":
      # Halves frames after the first: frame 0 passes; later frames merge with a stride-2 conv over
      # [last frame of the previous chunk, chunk].
      cache = self.variable("cache", "time_past", jnp.zeros, (x.shape[0], 1) + x.shape[2:], x.dtype)
      if first:
        cache.value = x[:, -1:]
      else:
        full = jnp.concatenate([cache.value, x], axis=1)
        cache.value = x[:, -1:]
        x = Conv3d(dim, (3, 1, 1), time_stride=2, dtype=self.dtype, name="time_conv")(full)
    return x


def avg_down_3d(x: Array, out_channels: int, factor_t: int, factor_s: int) -> Array:
  """diffusers AvgDown3D: (t, h, w) blocks folded into channels, then channel groups averaged.
  The chunk is zero-padded at the front to a multiple of factor_t. [B, T, H, W, C] -> [B, T/ft, ...]."""
  pad_t = (factor_t - x.shape[1] % factor_t) % factor_t
  x = jnp.pad(x, ((0, 0), (pad_t, 0), (0, 0), (0, 0), (0, 0)))
  b, t, h, w, c = x.shape
  x = x.reshape(b, t // factor_t, factor_t, h // factor_s, factor_s, w // factor_s, factor_s, c)
  x = x.transpose(0, 1, 3, 5, 7, 2, 4, 6)  # [B, T', H', W', C, ft, fs, fs]: torch's channel order
  group = c * factor_t * factor_s * factor_s // out_channels
  return x.reshape(b, t // factor_t, h // factor_s, w // factor_s, out_channels, group).mean(-1)


def dup_up_3d(x: Array, out_channels: int, factor_t: int, factor_s: int, first: bool) -> Array:
  """diffusers DupUp3D: channels repeated and unfolded into (t, h, w) blocks; the video's first
  chunk drops its first factor_t - 1 frames. [B, T, H, W, C] -> [B, T*ft, H*fs, W*fs, out]."""
  b, t, h, w, c = x.shape
  repeats = out_channels * factor_t * factor_s * factor_s // c
  x = jnp.repeat(x, repeats, axis=-1).reshape(b, t, h, w, out_channels, factor_t, factor_s, factor_s)
  x = x.transpose(0, 1, 5, 2, 6, 3, 7, 4)  # [B, T, ft, H, fs, W, fs, out]
  x = x.reshape(b, t * factor_t, h * factor_s, w * factor_s, out_channels)
  return x[:, factor_t - 1:] if first else x


class ResidualDownBlock(nn.Module):
  """WAN 2.2 encoder stage: res blocks (+ downsampler) plus an AvgDown3D shortcut of the input."""

  out_dim: int
  num_res_blocks: int
  temporal: bool
  down: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, first: bool) -> Array:
    shortcut = avg_down_3d(x, self.out_dim, 2 if self.temporal else 1, 2 if self.down else 1)
    for i in range(self.num_res_blocks):
      x = ResidualBlock(self.out_dim, self.dtype, name=f"resnets_{i}")(x, first)
    if self.down:
      x = Resample("downsample3d" if self.temporal else "downsample2d", self.out_dim, self.dtype,
                   name="downsampler")(x, first)
    return x + shortcut


class ResidualUpBlock(nn.Module):
  """WAN 2.2 decoder stage: res blocks (+ upsampler) plus a DupUp3D shortcut of the input."""

  out_dim: int
  num_res_blocks: int
  temporal: bool
  up: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, first: bool) -> Array:
    shortcut = dup_up_3d(x, self.out_dim, 2 if self.temporal else 1, 2, first) if self.up else None
    for i in range(self.num_res_blocks + 1):
      x = ResidualBlock(self.out_dim, self.dtype, name=f"resnets_{i}")(x, first)
    if self.up:
      x = Resample("upsample3d" if self.temporal else "upsample2d", self.out_dim, self.dtype, name="upsampler")(x,
                                                                                                                first)
    return x if shortcut is None else x + shortcut


class UpBlock(nn.Module):
  """WAN 2.1 decoder stage: res blocks, then an upsampler that halves the channels."""

  out_dim: int
  num_res_blocks: int
  mode: str | None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, first: bool) -> Array:
    for i in range(self.num_res_blocks + 1):
      x = ResidualBlock(self.out_dim, self.dtype, name=f"resnets_{i}")(x, first)
    if self.mode is not None:
      x = Resample(self.mode, self.out_dim // 2, self.dtype, name="upsamplers_0")(x, first)
    return x


class Encoder(nn.Module):
  config: WanVAEConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, first: bool) -> Array:  # [B, T, H, W, C_pix] -> [B, T', h, w, 2z]
    cfg = self.config
    dims = [cfg.base_dim * m for m in (1,) + cfg.dim_mult]
    last = len(cfg.dim_mult) - 1
    x = CausalConv3d(dims[0], dtype=self.dtype, name="conv_in")(x, first)
    index, scale = 0, 1.0
    for i, out_dim in enumerate(dims[1:]):
      if cfg.is_residual:
        x = ResidualDownBlock(out_dim,
                              cfg.num_res_blocks,
                              cfg.temperal_downsample[i] if i != last else False,
                              i != last,
                              self.dtype,
                              name=f"down_blocks_{i}")(x, first)
        continue
      for _ in range(cfg.num_res_blocks):
        x = ResidualBlock(out_dim, self.dtype, name=f"down_blocks_{index}")(x, first)
        index += 1
        if scale in cfg.attn_scales:
          x = AttentionBlock(self.dtype, name=f"down_blocks_{index}")(x)
          index += 1
      if i != last:
        mode = "downsample3d" if cfg.temperal_downsample[i] else "downsample2d"
        x = Resample(mode, out_dim, self.dtype, name=f"down_blocks_{index}")(x, first)
        index += 1
        scale /= 2.0
    x = MidBlock(self.dtype, name="mid_block")(x, first)
    x = nn.silu(RMSNorm(name="norm_out")(x))
    return CausalConv3d(2 * cfg.z_dim, dtype=self.dtype, name="conv_out")(x, first)


class Decoder(nn.Module):
  config: WanVAEConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z: Array, first: bool) -> Array:  # [B, T', h, w, z] -> [B, T, H, W, C_pix]
    cfg = self.config
    mult = cfg.dim_mult
    dims = [cfg.decoder_dim * m for m in (mult[-1],) + mult[::-1]]
    upsample = cfg.temperal_downsample[::-1]
    last = len(mult) - 1
    x = CausalConv3d(dims[0], dtype=self.dtype, name="conv_in")(z, first)
    x = MidBlock(self.dtype, name="mid_block")(x, first)
    for i, out_dim in enumerate(dims[1:]):
      up = i != last
      if cfg.is_residual:
        x = ResidualUpBlock(out_dim,
                            cfg.num_res_blocks,
                            upsample[i] if up else False,
                            up,
                            self.dtype,
                            name=f"up_blocks_{i}")(x, first)
      else:
        mode = ("upsample3d" if upsample[i] else "upsample2d") if up else None
        x = UpBlock(out_dim, cfg.num_res_blocks, mode, self.dtype, name=f"up_blocks_{i}")(x, first)
    x = nn.silu(RMSNorm(name="norm_out")(x))
    return CausalConv3d(cfg.out_channels, dtype=self.dtype, name="conv_out")(x, first)


def patchify(x: Array, p: int | None) -> Array:
  """[B, T, H, W, C] -> [B, T, H/p, W/p, C*p*p], channels ordered (c, pw, ph) as diffusers."""
  if not p or p == 1:
    return x
  b, t, h, w, c = x.shape
  x = x.reshape(b, t, h // p, p, w // p, p, c).transpose(0, 1, 2, 4, 6, 5, 3)  # [B, T, H', W', C, pw, ph]
  return x.reshape(b, t, h // p, w // p, c * p * p)


def unpatchify(x: Array, p: int | None) -> Array:
  if not p or p == 1:
    return x
  b, t, h, w, cpp = x.shape
  x = x.reshape(b, t, h, w, cpp // (p * p), p, p).transpose(0, 1, 2, 6, 3, 5, 4)  # [B, T, H', ph, W', pw, C]
  return x.reshape(b, t, h * p, w * p, cpp // (p * p))


class WanVAE(nn.Module):
  """Encoder + quant_conv, post_quant_conv + decoder; each method processes one chunk."""

  config: WanVAEConfig
  dtype: Any = jnp.float32

  def setup(self):
    self.encoder = Encoder(self.config, self.dtype)
    self.quant_conv = CausalConv3d(2 * self.config.z_dim, kernel=1, dtype=self.dtype)
    self.post_quant_conv = CausalConv3d(self.config.z_dim, kernel=1, dtype=self.dtype)
    self.decoder = Decoder(self.config, self.dtype)

  def __call__(self, video: Array) -> Array:
    """Initialisation: a [B, 1 + 4, H, W, C] video as two chunks each way creates every parameter
    (the temporal resampling convolutions only run after the first chunk)."""
    z = jnp.concatenate([self.encode_chunk(video[:, :1], first=True),
                         self.encode_chunk(video[:, 1:], first=False)],
                        axis=1)[..., :self.config.z_dim]
    return jnp.concatenate([self.decode_chunk(z[:, :1], first=True), self.decode_chunk(z[:, 1:], first=False)], axis=1)

  def encode_chunk(self, video: Array, first: bool) -> Array:
    """Pixels [B, T, H, W, C] in [-1, 1] -> posterior moments [B, T', h, w, 2z] (mean, logvar).
    The video's first chunk is frame 0 alone; later chunks continue from the cache."""
    if first and video.shape[1] != 1:
      raise ValueError(f"the first encoder chunk is frame 0 alone, got {video.shape[1]} frames")
    x = patchify(video, self.config.patch_size)
    return self.quant_conv(self.encoder(x, first), first).astype(jnp.float32)

  def decode_chunk(self, z: Array, first: bool) -> Array:
    """Raw latents [B, T', h, w, z] -> pixels [B, T, H, W, C] clipped to [-1, 1]. The first chunk is
    latent frame 0 alone; later chunks continue from the cache."""
    if first and z.shape[1] != 1:
      raise ValueError(f"the first decoder chunk is latent frame 0 alone, got {z.shape[1]} frames")
    x = self.decoder(self.post_quant_conv(z, first), first)
    return jnp.clip(unpatchify(x.astype(jnp.float32), self.config.patch_size), -1.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Chunked encoding / decoding over whole videos.


@functools.lru_cache(maxsize=None)
def _step(config: WanVAEConfig, dtype, method: str, first: bool):
  module = WanVAE(config, dtype)

  def run(params, cache, x):
    variables = {"params": params} if first else {"params": params, "cache": cache}
    out, state = module.apply(variables, x, first, method=getattr(WanVAE, method), mutable=["cache"])
    return out, state["cache"]

  return jax.jit(run)


def _compiled_step(config: WanVAEConfig, dtype, method: str, first: bool):
  """One jitted chunk step per architecture, shared by every runner (the latent statistics do not
  change the network, so they are not part of the key)."""
  return _step(dataclasses.replace(config, latents_mean=(), latents_std=()), dtype, method, first)


class WanVAERunner:
  """Encodes / decodes whole videos chunk by chunk with jitted steps and the feature cache.

  encode: frame 0, then `encode_chunk` latent frames (4 x encode_chunk pixel frames) per call;
  decode: latent frame 0, then `decode_chunk` latent frames per call. Compiles once for the first
  chunk, once for full chunks and once for a shorter last chunk."""

  def __init__(self,
               config: WanVAEConfig,
               params,
               dtype=jnp.float32,
               encode_chunk: int = 4,
               decode_chunk: int = 4,
               mesh: jax.sharding.Mesh | None = None):
    if encode_chunk < 1 or decode_chunk < 1:
      raise UserError(f"encode_chunk / decode_chunk must be >= 1, got {encode_chunk} / {decode_chunk}")
    self.config = config
    # With a mesh (starflow_jax.sharding.make_mesh) videos are split along the batch over its
    # (data, fsdp) axes and the parameters replicated, as the flow's batches are; the compiled
    # chunk steps follow those placements. Parameters go to the device(s) once: host arrays would
    # be copied in on every chunk call.
    self.mesh = mesh
    self.params = jax.device_put(params, sharding.replicated(mesh) if mesh is not None else None)
    self.encode_chunk, self.decode_chunk = encode_chunk, decode_chunk
    self._encode = {first: _compiled_step(config, jnp.dtype(dtype), "encode_chunk", first) for first in (True, False)}
    self._decode = {first: _compiled_step(config, jnp.dtype(dtype), "decode_chunk", first) for first in (True, False)}

  def check_video(self, video) -> None:
    cfg = self.config
    if video.ndim != 5 or video.shape[-1] != cfg.video_channels:
      raise UserError(f"the WAN VAE encodes videos [B, T, H, W, {cfg.video_channels}], got shape {tuple(video.shape)}")
    causal_vae.check_frames(video.shape[1], cfg.temporal_factor)
    s = cfg.spatial_factor
    if video.shape[2] % s or video.shape[3] % s:
      raise UserError(f"the WAN VAE needs height and width divisible by {s}, got {video.shape[2:4]}")

  def moments(self, video: Array) -> Array:
    """Pixels [B, 1 + 4k, H, W, C] -> posterior moments [B, 1 + k, H/s, W/s, 2z]."""
    self.check_video(video)
    video = self._place(video)
    out, cache = self._encode[True](self.params, None, video[:, :1])
    pieces, step = [out], self.config.temporal_factor * self.encode_chunk
    for start in range(1, video.shape[1], step):
      out, cache = self._encode[False](self.params, cache, video[:, start:start + step])
      pieces.append(out)
    return jnp.concatenate(pieces, axis=1)

  def _place(self, x):
    """x split along the batch over the mesh's (data, fsdp) axes (unchanged without a mesh)."""
    if self.mesh is None:
      return x
    dp = sharding.data_parallel_size(self.mesh)
    if x.shape[0] % dp:
      raise UserError(f"a batch of {x.shape[0]} cannot be split over {dp} data-parallel devices; "
                      f"use a multiple of {dp}")
    return jax.device_put(x, sharding.batch_sharding(self.mesh))

  def encode(self, video: Array) -> Array:
    """The posterior mean [B, 1 + k, h, w, z] (raw: not normalised)."""
    return self.moments(video)[..., :self.config.z_dim]

  def decode(self, z: Array) -> Array:
    """Raw latents [B, T', h, w, z] -> pixels [B, 1 + 4(T' - 1), H, W, C] in [-1, 1]."""
    step = self.chunk_decoder()
    pieces = [step(z[:, :1])
             ] + [step(z[:, start:start + self.decode_chunk]) for start in range(1, z.shape[1], self.decode_chunk)]
    return jnp.concatenate(pieces, axis=1)

  def chunk_decoder(self):
    """A decoder of one video, chunk by chunk: call it on raw latent frame 0, then on the
    following chunks in order ([B, k, h, w, z] -> their pixel frames); it keeps the feature cache."""
    cache = None

    def step(z: Array) -> Array:
      nonlocal cache
      if z.ndim != 5 or z.shape[-1] != self.config.z_dim:
        raise UserError(f"the WAN VAE decodes latents [B, T, h, w, {self.config.z_dim}], got {tuple(z.shape)}")
      out, cache = self._decode[cache is None](self.params, cache, self._place(z))
      return out

    return step

  def normalise(self, raw: Array) -> Array:
    """(raw - latents_mean) / latents_std per channel (identity when the config has none)."""
    mean, std = self._stats()
    return (raw - mean) / std

  def denormalise(self, latents: Array) -> Array:
    mean, std = self._stats()
    return latents * std + mean

  def _stats(self):
    cfg = self.config
    mean = jnp.asarray(cfg.latents_mean or (0.0,) * cfg.z_dim, jnp.float32)
    std = jnp.asarray(cfg.latents_std or (1.0,) * cfg.z_dim, jnp.float32)
    return mean, std


# ---------------------------------------------------------------------------------------------
# diffusers checkpoints.

WEIGHTS = "diffusion_pytorch_model.safetensors"


def diffusers_directory(directory) -> str:
  """The folder holding the VAE's config.json: `directory` itself or its `vae/` subfolder."""
  root = fileio.as_path(directory)
  for candidate in (root, root / "vae"):
    if (candidate / "config.json").is_file():
      return os.fspath(candidate)
  raise FileNotFoundError(f"{directory} has no config.json (nor vae/config.json): point it at a diffusers "
                          "AutoencoderKLWan folder, e.g. the vae/ folder of Wan-AI/Wan2.2-TI2V-5B-Diffusers "
                          "(see WORKSPACE.md)")


def load_config(directory: str) -> WanVAEConfig:
  directory = diffusers_directory(directory)
  values = fileio.read_json(fileio.as_path(directory) / "config.json")
  if values.get("_class_name", "AutoencoderKLWan") != "AutoencoderKLWan":
    raise UserError(f"{directory}/config.json describes a {values['_class_name']}, not an AutoencoderKLWan")
  return WanVAEConfig.from_diffusers(values)


def init_shapes(config: WanVAEConfig):
  s = config.spatial_factor
  video = jnp.zeros((1, 1 + config.temporal_factor, s, s, config.video_channels))
  return jax.eval_shape(lambda: WanVAE(config).init(jax.random.PRNGKey(0), video)["params"])


def _torch_key(path) -> str:
  names = [getattr(k, "key", str(k)) for k in path]
  leaf = {"kernel": "weight", "bias": "bias", "gamma": "gamma"}[names[-1]]
  return ".".join([re.sub(r"_(\d+)$", r".\1", n) for n in names[:-1]] + [leaf])


def params_from_state_dict(config: WanVAEConfig, state_dict: dict[str, np.ndarray], where: str = "") -> dict:
  """Our parameter tree from a diffusers AutoencoderKLWan state_dict; every weight must be used."""
  problems, used = [], set()

  def fill(path, leaf):
    key = _torch_key(path)
    if key not in state_dict:
      problems.append(f"missing {key}")
      return np.zeros(leaf.shape, np.float32)
    used.add(key)
    value = np.asarray(state_dict[key], np.float32)
    if key.endswith(".gamma"):
      value = value.reshape(-1)
    elif key.endswith(".weight"):  # torch [out, in, (kt,) kh, kw] -> ours [(kt,) kh, kw, in, out]
      value = value.transpose(tuple(range(2, value.ndim)) + (1, 0))
    if value.shape != leaf.shape:
      problems.append(f"shape of {key}: file {value.shape}, config {leaf.shape}")
    return value

  params = jax.tree_util.tree_map_with_path(fill, init_shapes(config))
  unused = sorted(set(state_dict) - used)
  if unused:
    problems.append(f"unused {', '.join(unused[:8])}" + (f" (+{len(unused) - 8} more)" if len(unused) > 8 else ""))
  if problems:
    raise UserError(f"{where or 'state_dict'}: cannot load the WAN VAE: " + "; ".join(problems))
  return params


def state_dict_from_params(params) -> dict[str, np.ndarray]:
  """The diffusers AutoencoderKLWan state_dict (torch layouts) of our parameters: the inverse of
  `params_from_state_dict`, for exporting a JAX-trained or fine-tuned WAN VAE."""
  out = {}

  def put(path, value):
    key, value = _torch_key(path), np.asarray(value, np.float32)
    if key.endswith(".gamma"):  # diffusers' norms broadcast: [C, 1, 1, 1]; attention's `norm`: [C, 1, 1]
      value = value.reshape((-1, 1, 1) if key.endswith(".norm.gamma") else (-1, 1, 1, 1))
    elif key.endswith(".weight"):  # ours [(kt,) kh, kw, in, out] -> torch [out, in, (kt,) kh, kw]
      value = value.transpose((value.ndim - 1, value.ndim - 2) + tuple(range(value.ndim - 2)))
    out[key] = np.ascontiguousarray(value)

  jax.tree_util.tree_map_with_path(put, params)
  return out


def save_diffusers(directory: str, config: WanVAEConfig, params) -> None:
  """Writes a diffusers-loadable folder (config.json + diffusion_pytorch_model.safetensors)."""
  if os.path.exists(os.path.join(directory, "config.json")):
    raise FileExistsError(f"{directory} already holds a config.json; choose a new directory")
  os.makedirs(directory, exist_ok=True)
  values = {
      "_class_name": "AutoencoderKLWan",
      **{
          k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(config).items()
      }, "scale_factor_spatial": config.spatial_factor,
      "scale_factor_temporal": config.temporal_factor
  }
  for key in ("latents_mean", "latents_std"):  # diffusers' defaults are WAN 2.1's 16-channel stats
    if not values[key]:
      values[key] = [0.0 if key == "latents_mean" else 1.0] * config.z_dim
  write_safetensors(os.path.join(directory, WEIGHTS), state_dict_from_params(params))
  fileio.write_json(os.path.join(directory, "config.json"), values)


def load_diffusers(directory: str) -> tuple[WanVAEConfig, dict]:
  """(config, params) of a diffusers AutoencoderKLWan folder (or a pipeline root with vae/)."""
  config = load_config(directory)
  directory = diffusers_directory(directory)
  return config, params_from_state_dict(config, read_hf_directory(directory, WEIGHTS), directory)
