"""From an ml-collections experiment config to one typed `Experiment`, validated up front.

An experiment config (experiments/configs/*.py) has sections: model (ModelConfig fields), text
(the built-in text encoder, or kind 'none'), autoencoder, data, train, mesh, checkpoint, log,
sample. `validate_experiment` checks them together before anything is compiled (every error
names the field and the fix) and returns the `Experiment`: the config turned into typed parts
once per process, which the trainer, the train loop and the exported model directory read.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import ml_collections
import numpy as np

from data_pipeline import latents, sources
from starflow_jax import sharding
from starflow_jax.jacobi import JacobiOptions
from starflow_jax.sampling import SamplingOptions, defaults_from_options
from starflow_jax.autoencoder import AutoencoderConfig, build_autoencoder
from starflow_jax.config import ModelConfig
from starflow_jax.errors import UserError
from starflow_jax.text.encoder import TextEncoderConfig
from starflow_jax.text.tokenizer import Tokenizer


def model_config(config: ml_collections.ConfigDict) -> ModelConfig:
  values = config.model.to_dict()
  if "layers_per_block" in values:
    values["layers_per_block"] = tuple(values["layers_per_block"])
  try:
    return ModelConfig(**values).validate()
  except TypeError as e:
    raise UserError(f"config.model: {e}; see starflow_jax/config.py for the fields") from e
  except ValueError as e:
    raise UserError(f"config.model: {e}") from e


def text_config(config: ml_collections.ConfigDict) -> TextEncoderConfig | None:
  """The built-in text encoder's config, or None when the data carries embeddings (kind 'none')."""
  text = config.text
  if text.kind == "none":
    return None
  if text.kind not in ("words", "bytes"):
    raise UserError(f"config.text.kind={text.kind!r} must be 'words', 'bytes' or 'none'")
  vocabulary = tuple(text.get("vocabulary", ())) or tuple(sources.caption_vocabulary(config.data))
  tokenizer = Tokenizer(text.kind, vocabulary, config.model.txt_size)
  return TextEncoderConfig(tokenizer=tokenizer, width=text.width, num_layers=text.num_layers,
                           head_dim=text.head_dim, output_dim=config.model.txt_dim,
                           compute_dtype=config.model.get("compute_dtype", "float32")).validate()


def autoencoder_config(config: ml_collections.ConfigDict) -> AutoencoderConfig:
  return AutoencoderConfig(**config.autoencoder.to_dict())


def sampling_options(config: ml_collections.ConfigDict, progress: bool = True) -> SamplingOptions:
  """How this experiment's models are sampled (config.sample, the training sigma)."""
  s = config.sample
  return SamplingOptions(
      method=s.method, guidance=float(s.guidance),
      jacobi=JacobiOptions(block_size=s.jacobi_block_size, threshold=s.jacobi_threshold,
                           max_iter=s.jacobi_max_iter),
      denoise=s.denoise, denoise_step=s.get("denoise_step", None),
      noise_std=float(config.train.noise_std), progress=progress).validate()


@dataclasses.dataclass(frozen=True, eq=False)
class Experiment:
  """An experiment config as typed parts (built once per process by `from_config`). Facts about
  the data are read when first asked for, so that an abstract trainer (a model compiled on paper)
  needs no dataset."""

  config: ml_collections.ConfigDict  # the source (data pipeline, logging and checkpoint sections)
  model: ModelConfig
  text: TextEncoderConfig | None  # the built-in text encoder; None when the data has embeddings
  autoencoder: AutoencoderConfig
  sampling: SamplingOptions

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "Experiment":
    """The typed parts, without the cross-section checks of `validate_experiment`."""
    return cls(config=config, model=model_config(config), text=text_config(config),
               autoencoder=autoencoder_config(config), sampling=sampling_options(config, progress=False))

  @functools.cached_property
  def _autoencoder(self):
    return build_autoencoder(self.autoencoder)

  @functools.cached_property
  def example_shape(self) -> tuple[int, int, int, int]:
    """(frames, height, width, channels) of the data's clips."""
    return tuple(int(v) for v in sources.example_shape(self.config.data))

  @functools.cached_property
  def latent_frames(self) -> int:
    try:
      return int(self._autoencoder.latent_frames(self.example_shape[0]))
    except ValueError as e:
      raise UserError(f"config.data: {e}") from e

  @property
  def spatial_factor(self) -> int:
    return int(self._autoencoder.spatial_factor)

  @functools.cached_property
  def latent_channels(self) -> int:
    return int(self._autoencoder.latent_channels(self.example_shape[3]))

  @functools.cached_property
  def provides_embeddings(self) -> bool:
    """Whether the data carries text embeddings (pre-encoded)."""
    return sources.provides_embeddings(self.config.data)

  @functools.cached_property
  def null_text_embedding(self) -> np.ndarray | None:
    """The embeddings' encoder's empty prompt [L, txt_dim], when the latents directory has one."""
    data = self.config.data
    if data.source == "latents" and data.latents_dir:
      return latents.null_text_embedding(data.latents_dir)
    return None

  def sampling_defaults(self) -> dict:
    """What the exported model directory records for the sampler: `sampling` serialised."""
    return defaults_from_options(self.sampling, self.example_shape[0], self.latent_frames)

  def tokens_per_step(self) -> int:
    """Latent tokens per global batch (for throughput figures)."""
    _, height, width, _ = self.example_shape
    p = self.model.patch_size
    grid = (height // self.spatial_factor // p) * (width // self.spatial_factor // p)
    return self.config.train.batch_size * self.latent_frames * grid


def validate_experiment(config: ml_collections.ConfigDict, num_devices: int | None = None) -> Experiment:
  """Checks the whole experiment config (raises a UserError naming the field and the fix) and
  returns it as an `Experiment`."""
  exp = Experiment.from_config(config)
  model = exp.model
  train = config.train
  if num_devices is None:
    num_devices = jax.device_count()
  mesh_shape = sharding.mesh_shape_for(tuple(config.mesh.shape), num_devices)
  dp = mesh_shape[0] * mesh_shape[1]
  if train.batch_size % dp:
    raise UserError(f"config.train.batch_size={train.batch_size} is not divisible by the data-parallel "
                    f"size {dp} (mesh data x fsdp = {mesh_shape[0]} x {mesh_shape[1]}); use a multiple of {dp}")
  if train.batch_size % jax.process_count():
    raise UserError(f"config.train.batch_size={train.batch_size} must split evenly over "
                    f"{jax.process_count()} hosts")
  if train.batch_size <= 0:
    raise UserError(f"config.train.batch_size={train.batch_size} must be positive")
  for name in ("lr", "min_lr", "denoiser_lr", "weight_decay", "denoiser_weight_decay", "grad_clip"):
    if train[name] < 0:
      raise UserError(f"config.train.{name}={train[name]} must be >= 0")
  if train.min_lr > train.lr:
    raise UserError(f"config.train.min_lr={train.min_lr} must not exceed lr={train.lr}")
  if not (0 <= train.b1 < 1 and 0 <= train.b2 < 1):
    raise UserError(f"config.train.b1={train.b1} and b2={train.b2} must be in [0, 1)")
  if train.warmup_steps < 0:
    raise UserError(f"config.train.warmup_steps={train.warmup_steps} must be >= 0")
  for section, name in (("checkpoint", "every_steps"), ("checkpoint", "keep"), ("log", "every_steps")):
    if config[section][name] < 1:
      raise UserError(f"config.{section}.{name}={config[section][name]} must be >= 1")
  if config.log.sample_every_steps < 0:
    raise UserError(f"config.log.sample_every_steps={config.log.sample_every_steps} must be >= 0 (0: never)")
  accum = train.get("grad_accum_steps", 1)
  if accum < 1:
    raise UserError(f"config.train.grad_accum_steps={accum} must be >= 1")
  if train.batch_size % (accum * dp):
    raise UserError(f"config.train.batch_size={train.batch_size} must be a multiple of grad_accum_steps x "
                    f"data-parallel size = {accum} x {dp}, so every microbatch splits over the devices")
  if not 0 <= train.get("ema_decay", 0.0) < 1:
    raise UserError(f"config.train.ema_decay={train.ema_decay} must be in [0, 1) (0: no EMA)")
  if train.num_steps <= 0:
    raise UserError(f"config.train.num_steps={train.num_steps} must be positive")
  if not 0 <= train.drop_label < 1 or not 0 <= train.drop_first_frame < 1:
    raise UserError("config.train.drop_label and drop_first_frame are probabilities in [0, 1)")
  if train.noise_std < 0:
    raise UserError(f"config.train.noise_std={train.noise_std} must be >= 0")
  if train.flow_score_matching and not model.learnable_self_denoiser:
    raise UserError("config.train.flow_score_matching=True needs config.model.learnable_self_denoiser=True")
  if train.flow_score_matching and train.noise_std <= 0:
    raise UserError("flow-score matching learns sigma * score: set config.train.noise_std > 0")
  if train.warmup_steps >= train.num_steps:
    raise UserError(f"config.train.warmup_steps={train.warmup_steps} must be < num_steps={train.num_steps}")
  text = exp.text
  if model.conditioning == "text" and text is None and not exp.provides_embeddings:
    raise UserError("the model is text-conditioned (model.txt_dim > 0) but config.text.kind='none' and "
                    "the data source provides no text embeddings; use a built-in text encoder "
                    "(text.kind='words') or pre-encoded data with embeddings")
  if text is not None and model.conditioning != "text":
    raise UserError("config.text is set but the model has no text condition; set model.txt_size and "
                    "model.txt_dim, or text.kind='none'")
  frames, height, width, _ = exp.example_shape
  factor = exp.spatial_factor
  lat_h, lat_w = height // factor, width // factor
  if height % factor or width % factor:
    raise UserError(f"data frames {height}x{width} are not divisible by the autoencoder's spatial "
                    f"factor {factor}")
  if lat_h % model.patch_size or lat_w % model.patch_size:
    raise UserError(f"latent frames {lat_h}x{lat_w} are not divisible by model.patch_size="
                    f"{model.patch_size}; change the data size or the patch size")
  if max(lat_h, lat_w) != model.img_size:
    raise UserError(f"model.img_size={model.img_size} but the data's latent frames are {lat_h}x{lat_w}; "
                    f"set model.img_size={max(lat_h, lat_w)}")
  if exp.latent_frames < 1:  # (reading it checks the clip length against the autoencoder)
    raise UserError(f"config.data: {frames} frames give no latent frames")
  if exp.latent_channels != model.in_channels:
    raise UserError(f"model.in_channels={model.in_channels} but the latents have "
                    f"{exp.latent_channels} channels; set model.in_channels accordingly")
  if model.is_video and train.drop_first_frame > 0 and frames < 2:
    raise UserError("drop_first_frame needs clips of at least 2 frames")
  if not model.is_video and frames != 1:
    raise UserError(f"the data has {frames} frames but the model is an image model "
                    "(temporal_causal=0); set model.temporal_causal=1 for video")
  return exp
