"""The autoencoder interface and the identity (pixel-space) autoencoder.

An autoencoder maps videos [B, T, H, W, C] in [-1, 1] to latents [B, T', H', W', C'] and back,
with spatial / temporal compression factors and a latent normalisation
latents = (raw - shift) * scale (the official VAE latents are scaled, e.g. by 0.6 for WAN 2.2).
The flow models the normalised latents; sampling decodes them back to pixels.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class AutoencoderConfig:
  kind: str = "identity"
  scale: float = 1.0
  shift: float = 0.0
  checkpoint: str = ""  # parameters of learned autoencoders

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "AutoencoderConfig":
    return cls(**d)


class IdentityAutoencoder:
  """Pixel space: latents are the (normalised) pixels themselves; no parameters."""

  spatial_factor = 1
  temporal_factor = 1

  def __init__(self, config: AutoencoderConfig):
    self.config = config

  def latent_channels(self, channels: int) -> int:
    return channels

  def latent_frames(self, frames: int) -> int:
    return frames

  def encode(self, params: Any, video: jnp.ndarray) -> jnp.ndarray:
    return (video - self.config.shift) * self.config.scale

  def decode(self, params: Any, latents: jnp.ndarray) -> jnp.ndarray:
    return latents / self.config.scale + self.config.shift


class PretrainedLatentSpace:
  """A latent space produced by a pretrained VAE outside this package (SD-VAE for images, WAN 2.2
  for video): its shape facts, for configs that train from pre-encoded latents. Encoding and
  decoding need that VAE's weights and code; until starflow_jax ships a port, use the
  official VAE to pre-encode data and to decode samples."""

  def __init__(self, config: AutoencoderConfig, spatial: int, temporal: int, channels: int):
    self.config = config
    self.spatial_factor, self.temporal_factor, self._channels = spatial, temporal, channels

  def latent_channels(self, channels: int) -> int:
    return self._channels

  def latent_frames(self, frames: int) -> int:
    return (frames - 1) // self.temporal_factor + 1 if self.temporal_factor > 1 else frames

  def _unavailable(self, what):
    raise ValueError(f"autoencoder kind {self.config.kind!r} cannot {what} inside starflow_jax; "
                     "train from pre-encoded latents (data.source='latents') and decode samples with "
                     "the original VAE, or use kind 'identity'")

  def encode(self, params, video):
    self._unavailable("encode")

  def decode(self, params, latents):
    self._unavailable("decode")


_PRETRAINED = {"sd_vae": (8, 1, 4), "wan2.2": (16, 4, 48)}


def build_autoencoder(config: AutoencoderConfig):
  if config.kind == "identity":
    return IdentityAutoencoder(config)
  if config.kind in _PRETRAINED:
    return PretrainedLatentSpace(config, *_PRETRAINED[config.kind])
  raise ValueError(f"unknown autoencoder kind {config.kind!r}; available: 'identity', "
                   f"{', '.join(repr(k) for k in _PRETRAINED)}")
