"""A small causal 3D convolutional VAE: 4x temporal, 8x spatial compression, trainable in JAX.

Videos [B, T, H, W, C] with T = 1 + 4k frames map to latents [B, 1 + k, H/8, W/8, z]. Like the
WAN VAE it is causal in time: every temporal convolution is padded with past frames only, and
the first frame is compressed on its own (temporal downsampling keeps frame 0 and merges later
frames in pairs), so latent frame j depends on pixel frames <= 4j and an image is a 1-frame clip.
Encoder: conv -> [res block, spatial /2] x3 -> temporal /2 x2 -> (mean, log-variance).
Decoder mirrors it with nearest-neighbour spatial upsampling and frame duplication in time.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from starflow_jax.errors import UserError

Array = jnp.ndarray


@dataclasses.dataclass(frozen=True)
class CausalVAEConfig:
  in_channels: int = 3
  latent_channels: int = 8
  channels: tuple[int, ...] = (32, 64, 64)  # per spatial stage (3 stages: 8x)
  temporal_downsamples: int = 2  # 4x
  kl_weight: float = 1e-4

  def __post_init__(self):
    object.__setattr__(self, "channels", tuple(self.channels))

  @property
  def spatial_factor(self) -> int:
    return 2**len(self.channels)

  @property
  def temporal_factor(self) -> int:
    return 2**self.temporal_downsamples

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["channels"] = list(self.channels)
    return d

  @classmethod
  def from_dict(cls, d: dict) -> "CausalVAEConfig":
    return cls(**d)


class CausalConv3D(nn.Module):
  """3D convolution, kernel (kt, k, k), padded with kt-1 replicated past frames and 'same' in space."""

  features: int
  kernel: tuple[int, int, int] = (3, 3, 3)
  spatial_stride: int = 1

  @nn.compact
  def __call__(self, x: Array) -> Array:  # [B, T, H, W, C]
    kt = self.kernel[0]
    if kt > 1:
      x = jnp.concatenate([jnp.repeat(x[:, :1], kt - 1, axis=1), x], axis=1)  # causal: past only
    pad_h, pad_w = self.kernel[1] // 2, self.kernel[2] // 2
    return nn.Conv(self.features,
                   self.kernel,
                   strides=(1, self.spatial_stride, self.spatial_stride),
                   padding=((0, 0), (pad_h, pad_h), (pad_w, pad_w)),
                   name="conv")(x)


class FrameGroupNorm(nn.Module):
  """GroupNorm with statistics over each frame's pixels only (pooling over time would let
  future frames change past latents, breaking causality)."""

  num_groups: int = 8

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b, t = x.shape[:2]
    y = nn.GroupNorm(num_groups=self.num_groups, name="norm")(x.reshape((b * t,) + x.shape[2:]))
    return y.reshape(x.shape)


class ResBlock(nn.Module):
  features: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    h = CausalConv3D(self.features, name="conv1")(nn.silu(FrameGroupNorm(name="norm1")(x)))
    h = CausalConv3D(self.features, name="conv2")(nn.silu(FrameGroupNorm(name="norm2")(h)))
    if x.shape[-1] != self.features:
      x = nn.Dense(self.features, name="skip")(x)
    return x + h


def _time_down(x: Array, dense: nn.Module) -> Array:
  """[B, 1 + 2m, ...] -> [B, 1 + m, ...]: frame 0 alone, later frames merged in pairs."""
  first, rest = x[:, :1], x[:, 1:]
  b, t, h, w, c = rest.shape
  pairs = rest.reshape(b, t // 2, 2, h, w, c).transpose(0, 1, 3, 4, 2, 5).reshape(b, t // 2, h, w, 2 * c)
  return jnp.concatenate([dense(jnp.concatenate([first, first], -1)), dense(pairs)], axis=1)


def _time_up(x: Array, dense: nn.Module) -> Array:
  """[B, 1 + m, ...] -> [B, 1 + 2m, ...]: frame 0 alone, later frames split into pairs."""
  y = dense(x)  # [B, 1+m, H, W, 2C]
  b, t, h, w, c2 = y.shape
  c = c2 // 2
  first = y[:, :1, ..., :c]
  rest = y[:, 1:].reshape(b, t - 1, h, w, 2, c).transpose(0, 1, 4, 2, 3, 5).reshape(b, 2 * (t - 1), h, w, c)
  return jnp.concatenate([first, rest], axis=1)


class Encoder(nn.Module):
  config: CausalVAEConfig

  @nn.compact
  def __call__(self, x: Array) -> tuple[Array, Array]:
    cfg = self.config
    h = CausalConv3D(cfg.channels[0], name="conv_in")(x)
    for i, ch in enumerate(cfg.channels):
      h = ResBlock(ch, name=f"res_{i}")(h)
      h = CausalConv3D(ch, (1, 3, 3), spatial_stride=2, name=f"down_{i}")(h)
    for i in range(cfg.temporal_downsamples):
      h = _time_down(h, nn.Dense(h.shape[-1], name=f"time_down_{i}"))
    h = ResBlock(cfg.channels[-1], name="res_out")(h)
    h = nn.silu(FrameGroupNorm(name="norm_out")(h))
    moments = CausalConv3D(2 * cfg.latent_channels, (1, 3, 3), name="conv_out")(h)
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return mean, jnp.clip(logvar, -20.0, 10.0)


class Decoder(nn.Module):
  config: CausalVAEConfig

  @nn.compact
  def __call__(self, z: Array) -> Array:
    cfg = self.config
    h = CausalConv3D(cfg.channels[-1], (1, 3, 3), name="conv_in")(z)
    h = ResBlock(cfg.channels[-1], name="res_in")(h)
    for i in range(cfg.temporal_downsamples):
      h = _time_up(h, nn.Dense(2 * h.shape[-1], name=f"time_up_{i}"))
    for i, ch in reversed(list(enumerate(cfg.channels))):
      b, t, hh, ww, c = h.shape
      h = jnp.repeat(jnp.repeat(h, 2, axis=2), 2, axis=3)  # nearest-neighbour 2x
      h = CausalConv3D(ch, (1, 3, 3), name=f"up_{i}")(h)
      h = ResBlock(ch, name=f"res_{i}")(h)
    h = nn.silu(FrameGroupNorm(name="norm_out")(h))
    return CausalConv3D(cfg.in_channels, name="conv_out")(h)


class CausalVAE(nn.Module):
  config: CausalVAEConfig

  def setup(self):
    self.encoder = Encoder(self.config)
    self.decoder = Decoder(self.config)

  def __call__(self, x: Array, rng: Array) -> tuple[Array, Array, Array]:
    """(reconstruction, mean, logvar) with a reparameterised latent sample."""
    mean, logvar = self.encoder(x)
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape)
    return self.decoder(z), mean, logvar

  def encode(self, x: Array) -> Array:
    return self.encoder(x)[0]  # the posterior mean

  def decode(self, z: Array) -> Array:
    return self.decoder(z)


def check_frames(num_frames: int, temporal_factor: int) -> None:
  if (num_frames - 1) % temporal_factor:
    raise UserError(f"the causal VAE needs 1 + {temporal_factor}k frames, got {num_frames}; use e.g. "
                    f"{1 + temporal_factor * max(1, (num_frames - 1) // temporal_factor)}")


def vae_loss(model: CausalVAE, params, video: Array, rng: Array) -> tuple[Array, dict]:
  """L1 + MSE reconstruction and a small KL to N(0, I)."""
  recon, mean, logvar = model.apply({"params": params}, video, rng)
  l1 = jnp.mean(jnp.abs(recon - video))
  mse = jnp.mean(jnp.square(recon - video))
  kl = 0.5 * jnp.mean(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
  loss = l1 + mse + model.config.kl_weight * kl
  return loss, {"loss": loss, "l1": l1, "mse": mse, "kl": kl}
