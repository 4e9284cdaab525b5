"""An official apple/ml-starflow YAML config (`configs/*.yaml`) read as the parts of a model
directory: the `Model(...)` arguments, the sampling defaults of the release's sampler, the prompt
template, the autoencoder and the text encoder.

The official YAML is a list of `--flag value` pairs for `train.py`'s parser (`arguments:`), which
`sample.py` merges with its own flags. Every argument is either mapped (the architecture, the
sampling recipe) or known to matter only for training (data, optimiser, parallelism), and those
are listed in `OfficialRecipe.training_only`; an argument we do not know, or a value that changes
the function computed in a way we do not implement, is a UserError naming it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import yaml

from starflow_jax import fileio
from starflow_jax.autoencoder import AutoencoderConfig
from starflow_jax.config import ModelConfig
from starflow_jax.errors import UserError
from starflow_jax.text.prompts import PromptTemplate
from starflow_jax.text.t5 import T5Reference

# train.py's parser defaults, for arguments a YAML leaves out (only those that we map).
_DEFAULTS = {
    "img_size": 32,
    "vid_size": None,
    "fps_cond": 0,
    "mix_aspect": 0,
    "channel_size": 3,
    "vae": None,
    "finetuned_vae": None,
    "text": None,
    "txt_size": 0,
    "sos": 0,
    "seq_order": "R2L",
    "patch_size": 4,
    "channels": 512,
    "top_block_channels": None,
    "blocks": 4,
    "layers_per_block": "8",
    "rope": 0,
    "pt_seq_len": None,
    "head_dim": 64,
    "num_heads": None,
    "num_kv_heads": None,
    "use_swiglu": 0,
    "use_qk_norm": 0,
    "use_post_norm": 0,
    "use_final_norm": 0,
    "use_bias": 1,
    "norm_type": "layer_norm",
    "use_pretrained_lm": None,
    "use_mm_attn": 0,
    "use_softplus": 0,
    "cond_top_only": 0,
    "soft_clip": 0.0,
    "learnable_self_denoiser": 0,
    "conditional_denoiser": 0,
    "noise_embed_denoiser": 0,
    "temporal_causal": 0,
    "shallow_block_local": 0,
    "denoiser_window": None,
    "local_attn_window": None,
    "noise_std": 0.3,
    "cond_noise_level": 0,
    "cfg": 0.0,
    "noise_type": "gaussian",
    "model_type": None,
    "vae_decoder_factor": 1,
}
# Arguments of the official Model(...) that the YAML names as they are (setup_transformer).
_MODEL_ARGUMENTS = ("txt_size", "sos", "cond_top_only", "use_softplus", "use_pretrained_lm", "use_mm_attn",
                    "use_final_norm", "soft_clip", "seq_order", "learnable_self_denoiser", "conditional_denoiser",
                    "temporal_causal", "shallow_block_local", "denoiser_window", "local_attn_window",
                    "top_block_channels", "patch_size", "channels", "rope", "pt_seq_len", "head_dim", "num_heads",
                    "num_kv_heads", "use_swiglu", "use_bias", "use_qk_norm", "use_post_norm", "norm_type")
# Read by the official training loop only (data, optimiser, parallelism, logging): the sampler
# and the model do not depend on them.
TRAINING_ONLY = frozenset({
    "no_flip", "fsdp", "fsdp_text_encoder", "secondary_img_size", "secondary_vid_size", "secondary_dataset",
    "secondary_batch_size", "secondary_ratio", "batch_size", "lr", "min_lr", "nvp", "adaln", "wds",
    "gradient_checkpoint", "gradient_checkpoint_mlp", "drop_label", "drop_image", "loss_scaling", "grad_clip",
    "grad_skip", "sample_freq", "latent_norm_regularization", "data", "logdir", "dataset", "caption_column", "epochs",
    "epoch_length", "acc", "fp8", "use_8bit_adam", "resume_path", "resume_epoch", "warmup_steps", "compile", "dry_run",
    "wandb_name", "save_every", "num_samples", "sample_batch_size", "train_seed", "last_frame_cond", "video_to_video",
    "model_config_path"
})
# Hidden sizes of the text encoders the official configs name (Model(txt_dim=...)).
T5_WIDTHS = {
    "google/flan-t5-small": 512,
    "google/flan-t5-base": 768,
    "google/flan-t5-large": 1024,
    "google/flan-t5-xl": 2048,
    "google/flan-t5-xxl": 4096,
    "t5xl": 2048
}
# The release's sampling scripts (scripts/test_sample_*.sh): what the YAML does not say.
RELEASE_JACOBI = {
    "video": dict(block_size=32, threshold=1e-3, max_iter=32),
    "image": dict(block_size=16, threshold=1e-3, max_iter=32)
}
OFFICIAL_DENOISE_STEP = 0.3  # utils/inference.py apply_denoising: x - 0.3 * denoiser(x)
OFFICIAL_CONTEXT = 16  # sample.py --context_length default


@dataclasses.dataclass(frozen=True)
class OfficialRecipe:
  """What an official YAML config says, as our parts."""

  model: ModelConfig
  autoencoder: AutoencoderConfig
  text_encoder: T5Reference | None
  sampling_defaults: dict  # a model directory's sampling defaults (sampling.options_from_defaults)
  training_only: tuple[str, ...]  # arguments that matter for training only


def read_yaml_arguments(path: str) -> dict[str, Any]:
  """{argument: value} of an official YAML config (`arguments:` list of one-key mappings)."""
  path = fileio.as_path(path)
  if not path.is_file():
    raise UserError(f"--yaml {path} does not exist")
  try:
    document = yaml.safe_load(path.read_text())
  except yaml.YAMLError as e:
    raise UserError(f"--yaml {path} is not valid YAML ({str(e).splitlines()[0]})") from None
  entries = document.get("arguments") if isinstance(document, dict) else None
  if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
    raise UserError(f"--yaml {path} is not an official config: it needs an 'arguments:' list of "
                    "'- name: value' entries (as apple/ml-starflow configs/*.yaml)")
  arguments = {}
  for entry in entries:
    arguments.update(entry)
  return arguments


def _flag(value) -> bool:
  """An official 0/1 switch (an int, or its text as argparse would read it)."""
  if not isinstance(value, str):
    return bool(value)
  try:
    return bool(int(value))
  except ValueError:
    raise UserError(f"official switch value {value!r} is not 0 or 1") from None


def _none(value):
  return None if value in (None, "None", "none", "") else value


def autoencoder_from(vae, finetuned, checkpoint: str) -> tuple[AutoencoderConfig, int]:
  """(our autoencoder config, its spatial factor) for the official `vae` argument."""
  if _none(finetuned) is not None:
    raise UserError(f"official finetuned_vae={finetuned!r}: fine-tuned VAE decoders are not supported; "
                    "set finetuned_vae: none (as the release's sampling scripts do)")
  vae = _none(vae)
  if vae is None:
    return AutoencoderConfig(), 1
  name, _, extra = str(vae).partition(":")
  if name.startswith("Wan-AI/Wan2.2"):
    return AutoencoderConfig(kind="wan2.2", checkpoint=checkpoint, temporal_scale=float(extra or 1.0)), 16
  if name.startswith("Wan-AI/Wan2.1"):
    if extra:
      raise UserError(f"official vae={vae!r}: a temporal scale is only defined for WAN 2.2")
    return AutoencoderConfig(kind="wan2.1", checkpoint=checkpoint), 8
  if "sd-vae" in name:
    return AutoencoderConfig(kind="sd_vae", scale=0.18215), 8
  raise UserError(f"official vae={vae!r} is not supported; supported: Wan-AI/Wan2.2-*[:scale], "
                  "Wan-AI/Wan2.1-*, stabilityai/sd-vae-*")


def text_encoder_from(text, max_length: int, path: str, width: int | None) -> T5Reference | None:
  """The official `text` argument as a T5 / Flan-T5 encoder (width: its config's d_model, if read)."""
  text = _none(text)
  if text is None:
    return None
  if text not in T5_WIDTHS and width is None:
    raise UserError(f"official text={text!r} is not supported: only T5 / Flan-T5 encoders "
                    f"({', '.join(sorted(T5_WIDTHS))}, or any T5 folder given with --t5)")
  return T5Reference(name=str(text), path=path, max_length=int(max_length), width=int(width or T5_WIDTHS[text]))


def _check_known(arguments: dict) -> None:
  known = set(_DEFAULTS) | set(_MODEL_ARGUMENTS) | TRAINING_ONLY
  unknown = sorted(set(arguments) - known)
  if unknown:
    raise UserError(f"official config arguments {unknown} are not known to starflow_jax; nothing was "
                    "written (supported: the architecture, the sampling recipe, and training-only flags)")
  fixed = {"noise_embed_denoiser": 0, "model_type": None, "noise_type": "gaussian", "vae_decoder_factor": 1}
  for name, value in fixed.items():
    given = arguments.get(name, value)
    if (_none(given) if value is None else type(value)(given)) != value:
      raise UserError(f"official {name}={given!r} is not implemented by starflow_jax (only {value!r})")


def model_from(arguments: dict, spatial_factor: int, txt_dim: int) -> ModelConfig:
  """The official Model(...) that setup_transformer builds from these arguments."""
  kwargs = {name: arguments[name] for name in _MODEL_ARGUMENTS if name in arguments}
  layers = [int(v) for v in str(arguments["layers_per_block"]).split()]
  num_blocks = int(arguments["blocks"]) if len(layers) == 1 else len(layers)
  for name in ("denoiser_window", "local_attn_window", "top_block_channels", "pt_seq_len", "num_heads", "num_kv_heads",
               "use_pretrained_lm"):
    if name in kwargs:
      kwargs[name] = _none(kwargs[name])
  kwargs.update(in_channels=int(arguments["channel_size"]),
                img_size=int(arguments["img_size"]) // spatial_factor,
                num_blocks=num_blocks,
                layers_per_block=tuple(layers * num_blocks if len(layers) == 1 else layers),
                txt_dim=txt_dim)
  for name in ("sos", "cond_top_only", "use_softplus", "use_final_norm", "learnable_self_denoiser",
               "conditional_denoiser", "shallow_block_local", "rope", "use_swiglu", "use_bias", "use_qk_norm",
               "use_post_norm", "use_mm_attn"):
    if name in kwargs:
      kwargs[name] = _flag(kwargs[name])
  for name in ("txt_size", "temporal_causal", "patch_size", "channels", "head_dim"):
    if name in kwargs:
      kwargs[name] = int(kwargs[name])
  kwargs["soft_clip"] = float(kwargs.get("soft_clip", 0.0))
  kwargs.setdefault("seq_order", _DEFAULTS["seq_order"])
  return ModelConfig.from_official_kwargs(kwargs)


def sampling_defaults_from(arguments: dict, model: ModelConfig, temporal_factor: int) -> dict:
  """The release sampler's recipe: frames and fps from vid_size, cfg, noise_std, Jacobi as the
  release scripts run it, the learned denoiser with the official step, the sliding window of
  the training length with 16 frames of context, and the prompt template."""
  vid_size = _none(arguments["vid_size"])
  if vid_size is not None:
    parts = [int(v) for v in str(vid_size).split(":")]
    num_frames, fps = parts[0], (parts[1] if len(parts) > 1 else 16)
    latent_frames = (num_frames - 1) // temporal_factor + 1
  else:
    num_frames = latent_frames = 1
    fps = 0
  kind = "video" if vid_size is not None else "image"
  cfg = arguments["cfg"]
  guidance = float(cfg[0] if isinstance(cfg, list) else str(cfg).split()[0])
  template = PromptTemplate(fps=_flag(arguments["fps_cond"]),
                            noise_level=_flag(arguments["cond_noise_level"]),
                            aspect_ratio=_flag(arguments["mix_aspect"]))
  defaults = {
      "method": "jacobi",
      "guidance": guidance,
      "jacobi_block_size": RELEASE_JACOBI[kind]["block_size"],
      "jacobi_threshold": RELEASE_JACOBI[kind]["threshold"],
      "jacobi_max_iter": RELEASE_JACOBI[kind]["max_iter"],
      "denoise": "learned" if model.learnable_self_denoiser else "none",
      "noise_std": float(arguments["noise_std"]),
      "num_frames": num_frames,
      "latent_frames": latent_frames,
      "fps": fps
  }
  if model.learnable_self_denoiser:
    defaults["denoise_step"] = OFFICIAL_DENOISE_STEP
  if latent_frames > 1:
    defaults.update(window=latent_frames, context=min(OFFICIAL_CONTEXT, latent_frames - 1))
  if template.active:
    defaults["prompt_template"] = template.to_dict()
  if template.aspect_ratio and kind == "video":
    defaults["aspect_ratio"] = "16:9"  # scripts/test_sample_video.sh
  return defaults


def read_recipe(path: str, vae_dir: str = "", t5_dir: str = "", t5_width: int | None = None) -> OfficialRecipe:
  """The official YAML config at `path` as our parts. vae_dir / t5_dir: local folders of the
  autoencoder and text encoder it names (recorded in the model directory for the sampler)."""
  given = read_yaml_arguments(path)
  _check_known(given)
  arguments = {**_DEFAULTS, **given}
  autoencoder, spatial_factor = autoencoder_from(arguments["vae"], arguments["finetuned_vae"], vae_dir)
  text = text_encoder_from(arguments["text"], arguments["txt_size"], t5_dir, t5_width)
  model = model_from(arguments, spatial_factor, text.width if text else 0)
  temporal_factor = 4 if autoencoder.kind in ("wan2.1", "wan2.2") else 1
  defaults = sampling_defaults_from(arguments, model, temporal_factor)
  return OfficialRecipe(model, autoencoder, text, defaults, tuple(sorted(set(given) & TRAINING_ONLY)))
