"""Latent autoencoders: one interface (encode / decode / scale, shift / compression factors)."""

from starflow_jax.autoencoder.base import AutoencoderConfig, build_autoencoder

__all__ = ["AutoencoderConfig", "build_autoencoder"]
