"""From an ml-collections experiment config to one typed `Experiment`, validated up front.

An experiment config (experiments/configs/*.py) has sections: model (ModelConfig fields), text
(the built-in text encoder, or kind 'none'), autoencoder, data, train, mesh, checkpoint, log,
sample. `validate_experiment` checks them together before anything is compiled (every error
names the field and the fix) and returns the `Experiment`: the config turned into typed parts
once per process (model, text encoder, autoencoder, train-step, optimizer, mesh, loop and
sampling settings, and the data's shape facts), which the trainer, the train loop and the
exported model directory read. Only the data section stays a ConfigDict: each source kind reads
its own fields (data_pipeline/sources.py).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import ml_collections
import numpy as np

from data_pipeline import agent_world, latents, sources
from starflow_jax import sharding
from starflow_jax.jacobi import JacobiOptions
from starflow_jax.sampling import SamplingOptions, defaults_from_options
from starflow_jax.autoencoder import AutoencoderConfig, build_autoencoder
from starflow_jax.config import ModelConfig
from starflow_jax.errors import UserError
from starflow_jax.text.encoder import TextEncoderConfig
from starflow_jax.text.tokenizer import SPECIAL_TOKENS, Tokenizer


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
  return TextEncoderConfig(tokenizer=tokenizer,
                           width=text.width,
                           num_layers=text.num_layers,
                           head_dim=text.head_dim,
                           output_dim=config.model.txt_dim,
                           compute_dtype=config.model.get("compute_dtype", "float32")).validate()


def autoencoder_config(config: ml_collections.ConfigDict) -> AutoencoderConfig:
  return AutoencoderConfig(**config.autoencoder.to_dict())


def sampling_options(config: ml_collections.ConfigDict, progress: bool = True) -> SamplingOptions:
  """How this experiment's models are sampled (config.sample, the training sigma)."""
  s = config.sample
  return SamplingOptions(method=s.method,
                         guidance=float(s.guidance),
                         jacobi=JacobiOptions(block_size=s.jacobi_block_size,
                                              threshold=s.jacobi_threshold,
                                              max_iter=s.jacobi_max_iter),
                         denoise=s.denoise,
                         denoise_step=s.get("denoise_step", None),
                         noise_std=float(config.train.noise_std),
                         progress=progress).validate()


@dataclasses.dataclass(frozen=True)
class StepSettings:
  """Static (hashable) settings of the train step (config.train)."""

  noise_std: float
  dequantize: bool
  drop_label: float
  latent_norm_reg: float
  grad_clip: float
  grad_skip: bool
  grad_skip_after: int
  flow_score_matching: bool
  pre_encoded: bool  # the data are latents already (data.source='latents')
  extend_tag: int  # token id of the "(extend)" caption tag of first-frame-dropped clips
  grad_accum_steps: int = 1
  ema_decay: float = 0.0

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "StepSettings":
    t = config.train
    return cls(noise_std=float(t.noise_std),
               dequantize=bool(t.dequantize),
               drop_label=float(t.drop_label),
               latent_norm_reg=float(t.latent_norm_reg),
               grad_clip=float(t.grad_clip),
               grad_skip=bool(t.grad_skip),
               grad_skip_after=int(t.grad_skip_after),
               flow_score_matching=bool(t.flow_score_matching),
               pre_encoded=config.data.source == "latents",
               extend_tag=SPECIAL_TOKENS.index("(extend)"),
               grad_accum_steps=int(t.get("grad_accum_steps", 1)),
               ema_decay=float(t.get("ema_decay", 0.0)))


@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
  """The two AdamW optimizers' hyper-parameters (config.train): the flow's, with linear warm-up and
  cosine decay to min_lr, and the denoiser's."""

  lr: float
  min_lr: float
  b1: float
  b2: float
  weight_decay: float
  warmup_steps: int
  num_steps: int
  denoiser_lr: float
  denoiser_weight_decay: float

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "OptimizerSettings":
    t = config.train
    return cls(lr=float(t.lr),
               min_lr=float(t.min_lr),
               b1=float(t.b1),
               b2=float(t.b2),
               weight_decay=float(t.weight_decay),
               warmup_steps=int(t.warmup_steps),
               num_steps=int(t.num_steps),
               denoiser_lr=float(t.denoiser_lr),
               denoiser_weight_decay=float(t.denoiser_weight_decay))


@dataclasses.dataclass(frozen=True)
class MeshSettings:
  """The device mesh (config.mesh): (data, fsdp, tensor) sizes, -1 for "the rest"; logical-axis
  rules for parameters and activations; whether the run spans several processes."""

  shape: tuple[int, int, int]
  rules: tuple = sharding.DEFAULT_RULES
  multihost: bool = False

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "MeshSettings":
    m = config.mesh
    return cls(shape=tuple(int(v) for v in m.shape),
               rules=sharding.rules_from_config(m.get("rules")),
               multihost=bool(m.get("multihost", False)))

  def make(self) -> jax.sharding.Mesh:
    """The mesh over this job's devices (after `distributed.initialize`)."""
    return sharding.make_mesh(self.shape)


@dataclasses.dataclass(frozen=True)
class LoopSettings:
  """What the train loop schedules (config.seed, train, checkpoint, log)."""

  seed: int
  batch_size: int  # the global batch
  num_steps: int
  drop_first_frame: float  # probability that a step trains on clips without their first frame
  init_from: str  # a model directory to start from ("" : random initialisation)
  checkpoint_every: int
  checkpoint_keep: int
  async_checkpoints: bool
  log_every: int
  sample_every: int  # 0: never
  num_samples: int
  sample_prompts: tuple[str, ...]
  progress: bool

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "LoopSettings":
    t, ckpt, log = config.train, config.checkpoint, config.log
    return cls(seed=int(config.seed),
               batch_size=int(t.batch_size),
               num_steps=int(t.num_steps),
               drop_first_frame=float(t.drop_first_frame),
               init_from=str(t.get("init_from", "") or ""),
               checkpoint_every=int(ckpt.every_steps),
               checkpoint_keep=int(ckpt.keep),
               async_checkpoints=bool(ckpt.get("async_save", True)),
               log_every=int(log.every_steps),
               sample_every=int(log.sample_every_steps),
               num_samples=int(log.num_samples),
               sample_prompts=tuple(str(p) for p in log.get("sample_prompts", ())),
               progress=bool(log.get("progress", True)))


@dataclasses.dataclass(frozen=True, eq=False)
class Experiment:
  """An experiment config as typed parts (built once per process by `from_config`). Facts about
  the data are read when first asked for, so that an abstract trainer (a model compiled on paper)
  needs no dataset."""

  config: ml_collections.ConfigDict  # the source (its data section, and what checkpoints record)
  model: ModelConfig
  text: TextEncoderConfig | None  # the built-in text encoder; None when the data has embeddings
  autoencoder: AutoencoderConfig
  sampling: SamplingOptions
  step: StepSettings
  optimizer: OptimizerSettings
  mesh: MeshSettings
  loop: LoopSettings

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "Experiment":
    """The typed parts, without the cross-section checks of `validate_experiment`."""
    return cls(config=config,
               model=model_config(config),
               text=text_config(config),
               autoencoder=autoencoder_config(config),
               sampling=sampling_options(config, progress=False),
               step=StepSettings.from_config(config),
               optimizer=OptimizerSettings.from_config(config),
               mesh=MeshSettings.from_config(config),
               loop=LoopSettings.from_config(config))

  @property
  def data(self) -> ml_collections.ConfigDict:
    """The data section (read by the source registry, data_pipeline/sources.py)."""
    return self.config.data

  @functools.cached_property
  def _shape_autoencoder(self):
    """The autoencoder without a mesh, for its shape facts (reads a learned one's config only)."""
    return build_autoencoder(self.autoencoder)

  def build_autoencoder(self, mesh: jax.sharding.Mesh | None = None):
    """The autoencoder, its weights (loaded when first used) placed on `mesh`'s devices."""
    return self._shape_autoencoder.on_mesh(mesh)

  @functools.cached_property
  def example_shape(self) -> tuple[int, int, int, int]:
    """(frames, height, width, channels) of the data's clips."""
    return tuple(int(v) for v in sources.example_shape(self.data))

  @functools.cached_property
  def latent_frames(self) -> int:
    try:
      return int(self._shape_autoencoder.latent_frames(self.example_shape[0]))
    except ValueError as e:
      raise UserError(f"config.data: {e}") from e

  @property
  def spatial_factor(self) -> int:
    return int(self._shape_autoencoder.spatial_factor)

  @functools.cached_property
  def latent_channels(self) -> int:
    return int(self._shape_autoencoder.latent_channels(self.example_shape[3]))

  @functools.cached_property
  def provides_embeddings(self) -> bool:
    """Whether the data carries text embeddings (pre-encoded)."""
    return sources.provides_embeddings(self.data)

  @functools.cached_property
  def null_text_embedding(self) -> np.ndarray | None:
    """The embeddings' encoder's empty prompt [L, txt_dim], when the latents directory has one."""
    if self.data.source == "latents" and self.data.latents_dir:
      return latents.null_text_embedding(self.data.latents_dir)
    return None

  def sampling_defaults(self) -> dict:
    """What the exported model directory records for the sampler: `sampling` serialised."""
    return defaults_from_options(self.sampling, self.example_shape[0], self.latent_frames)

  def tokens_per_step(self) -> int:
    """Latent tokens per global batch (for throughput figures)."""
    _, height, width, _ = self.example_shape
    p = self.model.patch_size
    grid = (height // self.spatial_factor // p) * (width // self.spatial_factor // p)
    return self.loop.batch_size * self.latent_frames * grid

  def drop_first_frame_at(self, step: int) -> bool:
    """Host-side, deterministic in (seed, step): does step `step` train on clips without frame 0?"""
    p = self.loop.drop_first_frame
    if p <= 0 or not self.model.is_video:
      return False
    return bool(np.random.default_rng([self.loop.seed, step, 7]).random() < p)


def validate_experiment(config: ml_collections.ConfigDict, num_devices: int | None = None) -> Experiment:
  """Checks the whole experiment config (raises a UserError naming the field and the fix) and
  returns it as an `Experiment`."""
  exp = Experiment.from_config(config)
  _check_batch(exp, jax.device_count() if num_devices is None else num_devices)
  _check_train(exp)
  _check_text(exp)
  _check_actions(exp)
  _check_shapes(exp)
  return exp


def _check_actions(exp: Experiment) -> None:
  """Per-frame actions: the model reads as many as the data source has."""
  has_actions = exp.data.source == "agent_world"
  wanted = len(agent_world.ACTIONS) if has_actions else 0
  if exp.model.num_actions != wanted:
    where = f"data.source={exp.data.source!r} " + (f"has {wanted} actions" if has_actions else "has no actions")
    raise UserError(f"model.num_actions={exp.model.num_actions} but {where}; set model.num_actions={wanted}")


def _check_batch(exp: Experiment, num_devices: int) -> None:
  """The global batch against the mesh, the hosts and the microbatches."""
  batch = exp.loop.batch_size
  mesh_shape = sharding.mesh_shape_for(exp.mesh.shape, num_devices)
  dp = mesh_shape[0] * mesh_shape[1]
  accum = exp.step.grad_accum_steps
  if batch <= 0:
    raise UserError(f"config.train.batch_size={batch} must be positive")
  if batch % dp:
    raise UserError(f"config.train.batch_size={batch} is not divisible by the data-parallel "
                    f"size {dp} (mesh data x fsdp = {mesh_shape[0]} x {mesh_shape[1]}); use a multiple of {dp}")
  if batch % jax.process_count():
    raise UserError(f"config.train.batch_size={batch} must split evenly over {jax.process_count()} hosts")
  if accum < 1:
    raise UserError(f"config.train.grad_accum_steps={accum} must be >= 1")
  if batch % (accum * dp):
    raise UserError(f"config.train.batch_size={batch} must be a multiple of grad_accum_steps x "
                    f"data-parallel size = {accum} x {dp}, so every microbatch splits over the devices")


def _check_train(exp: Experiment) -> None:
  """Optimizer, objective and loop settings: each in its range."""
  opt, step, loop = exp.optimizer, exp.step, exp.loop
  for name in ("lr", "min_lr", "denoiser_lr", "weight_decay", "denoiser_weight_decay"):
    if getattr(opt, name) < 0:
      raise UserError(f"config.train.{name}={getattr(opt, name)} must be >= 0")
  if step.grad_clip < 0:
    raise UserError(f"config.train.grad_clip={step.grad_clip} must be >= 0")
  if opt.min_lr > opt.lr:
    raise UserError(f"config.train.min_lr={opt.min_lr} must not exceed lr={opt.lr}")
  if not (0 <= opt.b1 < 1 and 0 <= opt.b2 < 1):
    raise UserError(f"config.train.b1={opt.b1} and b2={opt.b2} must be in [0, 1)")
  if loop.num_steps <= 0:
    raise UserError(f"config.train.num_steps={loop.num_steps} must be positive")
  if opt.warmup_steps < 0:
    raise UserError(f"config.train.warmup_steps={opt.warmup_steps} must be >= 0")
  if opt.warmup_steps >= loop.num_steps:
    raise UserError(f"config.train.warmup_steps={opt.warmup_steps} must be < num_steps={loop.num_steps}")
  for field, value in (("checkpoint.every_steps", loop.checkpoint_every), ("checkpoint.keep", loop.checkpoint_keep),
                       ("log.every_steps", loop.log_every)):
    if value < 1:
      raise UserError(f"config.{field}={value} must be >= 1")
  if loop.sample_every < 0:
    raise UserError(f"config.log.sample_every_steps={loop.sample_every} must be >= 0 (0: never)")
  if not 0 <= step.ema_decay < 1:
    raise UserError(f"config.train.ema_decay={step.ema_decay} must be in [0, 1) (0: no EMA)")
  if not 0 <= step.drop_label < 1 or not 0 <= loop.drop_first_frame < 1:
    raise UserError("config.train.drop_label and drop_first_frame are probabilities in [0, 1)")
  if step.noise_std < 0:
    raise UserError(f"config.train.noise_std={step.noise_std} must be >= 0")
  if step.flow_score_matching and not exp.model.learnable_self_denoiser:
    raise UserError("config.train.flow_score_matching=True needs config.model.learnable_self_denoiser=True")
  if step.flow_score_matching and step.noise_std <= 0:
    raise UserError("flow-score matching learns sigma * score: set config.train.noise_std > 0")


def _check_text(exp: Experiment) -> None:
  """The model's condition against the text encoder and the data."""
  model = exp.model
  if model.conditioning == "text" and exp.text is None and not exp.provides_embeddings:
    raise UserError("the model is text-conditioned (model.txt_dim > 0) but config.text.kind='none' and "
                    "the data source provides no text embeddings; use a built-in text encoder "
                    "(text.kind='words') or pre-encoded data with embeddings")
  if exp.text is not None and model.conditioning != "text":
    raise UserError("config.text is set but the model has no text condition; set model.txt_size and "
                    "model.txt_dim, or text.kind='none'")


def _check_shapes(exp: Experiment) -> None:
  """The data's clips, through the autoencoder, against the model's input."""
  model = exp.model
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
  if model.is_video and exp.loop.drop_first_frame > 0 and frames < 2:
    raise UserError("drop_first_frame needs clips of at least 2 frames")
  if not model.is_video and frames != 1:
    raise UserError(f"the data has {frames} frames but the model is an image model "
                    "(temporal_causal=0); set model.temporal_causal=1 for video")
