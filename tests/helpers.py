"""Shared test fixtures: small configs and randomly perturbed parameters."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from starflow_jax.config import ModelConfig
from starflow_jax.model import init_params

GOLDEN_DIR = os.path.join(os.path.dirname(__file__), "golden")
GOLDEN_NAMES = ("image", "image_cond", "video")


def perturb(params, seed: int, std: float = 0.05):
  """params + N(0, std^2) noise on every leaf (fresh flow blocks are the identity otherwise).

  Host-side numpy noise: compiling a threefry kernel per leaf would cost seconds.
  """
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda p: jnp.asarray(np.asarray(p) + std * rng.standard_normal(p.shape).astype(np.float32)), params)


def tiny_video_config(**overrides) -> ModelConfig:
  """A 3-block text-conditioned video model small enough for brute-force Jacobians."""
  values = dict(in_channels=2,
                img_size=4,
                patch_size=2,
                channels=64,
                num_blocks=3,
                layers_per_block=(1, 1, 2),
                head_dim=32,
                top_block_channels=96,
                txt_size=3,
                txt_dim=8,
                cond_top_only=True,
                temporal_causal=1,
                shallow_block_local=True,
                soft_clip=4.0,
                learnable_self_denoiser=True,
                conditional_denoiser=True,
                denoiser_window=2,
                denoiser_layers=2)
  values.update(overrides)
  return ModelConfig(**values).validate()


def tiny_image_config(**overrides) -> ModelConfig:
  values = dict(in_channels=3,
                img_size=4,
                patch_size=1,
                channels=64,
                num_blocks=3,
                layers_per_block=(1, 1, 2),
                head_dim=32,
                soft_clip=4.0)
  values.update(overrides)
  return ModelConfig(**values).validate()


def save_pixel_video_model(directory: str, num_frames: int) -> None:
  """An unconditional pixel-space video model of 8 x 8 RGB frames, random weights, as a model
  directory (training sigma 0.1, clips of `num_frames`)."""
  from starflow_jax import checkpoint
  config = tiny_video_config(in_channels=3,
                             img_size=8,
                             txt_size=0,
                             txt_dim=0,
                             cond_top_only=False,
                             learnable_self_denoiser=False,
                             conditional_denoiser=False)
  checkpoint.save_model(directory,
                        config,
                        random_params(config, std=0.1),
                        sampling_defaults={
                            "noise_std": 0.1,
                            "num_frames": num_frames
                        })


def random_params(config: ModelConfig, seed: int = 0, std: float = 0.05, num_frames: int | None = None):
  params = init_params(config, jax.random.PRNGKey(seed), num_frames=num_frames)
  return perturb(params, seed + 1, std)


def random_condition(config: ModelConfig, batch: int, seed: int = 0):
  if config.conditioning == "text":
    return jax.random.normal(jax.random.PRNGKey(seed + 100), (batch, config.txt_size, config.txt_dim))
  if config.conditioning == "class":
    return jnp.arange(batch) % config.num_classes
  return None


def golden_video_bundle():
  """(ModelBundle, text condition) of the official golden video model (tests/golden/video)."""
  from starflow_jax.checkpoint import ModelBundle
  from starflow_jax.interop.golden import load_golden
  golden = load_golden(os.path.join(GOLDEN_DIR, "video"))
  return ModelBundle(golden.config, golden.params), jnp.asarray(golden.vectors["y"])
