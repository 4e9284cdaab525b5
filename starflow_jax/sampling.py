"""The sampling pipeline: text -> noise -> deep block -> shallow blocks -> denoiser -> pixels.

`VideoSampler.generate` runs, for a batch of prompts:
  1. the deep block's inverse frame by frame from a host loop; each call is one compiled `lax`
     loop over a run of Jacobi blocks or tokens with a dynamic start, so nothing recompiles per
     frame or per window. Classifier-free guidance doubles the batch inside. Conditioning frames
     (image-to-video, continuation, video-to-video) are run forward first to fill the KV cache.
     Videos longer than the window slide it, re-encoding the last `context` frames (positions
     restart), as the official sampler does.
  2. the shallow blocks' inverses, one frame at a time as soon as the deep block has finished it
     (frame-local shallow blocks; pipelined), or on the whole clip otherwise;
  3. the denoiser: the learned flow-score-matching network, x - step * s(x) (step = sigma, the
     Tweedie step, by default; the official sampler uses 0.3), or the flow's own score
     x + sigma^2 grad log p(x), or none; windowed with overlap for long videos;
  4. the autoencoder's decoder.
The noise of each latent frame comes from its own key (`frame_noise`), so a clip starts as a
longer one does, and `stream` yields the frames of `generate` one by one as each is final,
for any length: the deep block's token buffer then holds one window, rolled forward as it
slides, and `VideoStream.set_prompt` switches the condition from a given frame on.
Over several devices or hosts (`mesh`; by default all devices of a multi-host run) the sampler
lays the devices out as [hosts, local devices]: a batch is split over all of them when it
divides the device count, else over the hosts when it divides the host count (2 samples on 2
hosts: one each), else replicated; parameters are replicated; every compiled call runs on all
processes at once, and `distributed.gather_to_host` collects the videos.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from starflow_jax import (decoding, distributed, inverse, jacobi, layers, losses, model as model_lib, sharding,
                          step_cost, tokens)
from starflow_jax.autoencoder import build_autoencoder
from starflow_jax.checkpoint import ModelBundle
from starflow_jax.decoding import DecodeState
from starflow_jax.errors import UserError
from starflow_jax.jacobi import JacobiOptions
from starflow_jax.model import StarFlow
from starflow_jax.rope import TokenGrid
from starflow_jax.text.encoder import TextEncoder
from starflow_jax.text.prompts import PromptTemplate, check_aspect_ratio

Array = jnp.ndarray
OFFICIAL_DENOISE_STEP = 0.3


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
  """How to sample. `window` frames is the longest clip the deep block attends to (default: the
  whole video); longer videos slide it with `context` frames of context (default window - 1)."""

  method: str = "jacobi"
  guidance: float = 0.0
  jacobi: JacobiOptions = JacobiOptions()
  denoise: str = "auto"  # 'learned', 'score', 'none', or 'auto' (learned when the model has one)
  denoise_step: float | None = None  # None: sigma (Tweedie); the official sampler uses 0.3
  noise_std: float = 0.0  # the training sigma: noise of conditioning frames, denoising strength
  window: int | None = None
  context: int | None = None
  temperature: float = 1.0  # noise z ~ N(0, temperature^2): < 1 trades diversity for cleaner samples
  fps: int = 0  # the clips' frame rate: in the prompt (prompt_template.fps) and the output files
  aspect_ratio: str = "1:1"  # W:H of the samples, for models trained on mixed aspect ratios
  prompt_template: PromptTemplate = PromptTemplate()  # how the model's captions were written
  attn_temp: float = 1.0  # softmax temperature of the inversion's attention (official --attn_temp)
  guide_top: int | None = None  # official --guide_top: any value guides the deep block only
  # method 'auto': what one Jacobi iteration over a block costs in token steps of sequential
  # decoding (None: measured on the weights and machine, `step_cost`); see `choose_methods`.
  iteration_cost: float | None = None
  progress: bool = True

  def validate(self) -> "SamplingOptions":
    if self.method not in ("jacobi", "sequential", "auto"):
      raise UserError(f"method={self.method!r} must be 'auto', 'jacobi' or 'sequential'")
    if self.method == "auto" and self.jacobi.reference_compatible:
      raise UserError("method='auto' chooses per flow block; the reference-compatible Jacobi is all-Jacobi: "
                      "use method='jacobi'")
    if self.iteration_cost is not None and self.iteration_cost <= 0:
      raise UserError(f"iteration_cost={self.iteration_cost} must be > 0")
    if self.denoise not in ("auto", "learned", "score", "none"):
      raise UserError(f"denoise={self.denoise!r} must be 'auto', 'learned', 'score' or 'none'")
    if self.guidance < 0:
      raise UserError(f"guidance={self.guidance} must be >= 0")
    if self.temperature <= 0:
      raise UserError(f"temperature={self.temperature} must be > 0")
    if self.window is not None and self.window < 1:
      raise UserError(f"window={self.window} must be >= 1 frame")
    if self.context is not None and self.window is not None and not 0 < self.context < self.window:
      raise UserError(f"context={self.context} must be in [1, window={self.window})")
    if self.attn_temp <= 0:
      raise UserError(f"attn_temp={self.attn_temp} must be > 0")
    if self.fps < 0:
      raise UserError(f"fps={self.fps} must be >= 0")
    check_aspect_ratio(self.aspect_ratio)
    if self.aspect_ratio != "1:1" and not self.prompt_template.aspect_ratio:
      raise UserError(f"aspect_ratio={self.aspect_ratio}: this model was trained on square clips only "
                      "(no mixed aspect ratios, official mix_aspect=0); sample at 1:1")
    return self


def latent_size(side: int, spatial_factor: int, patch_size: int, aspect_ratio: str) -> tuple[int, int]:
  """(height, width) of the latents for `aspect_ratio` W:H at the area of the training `side`
  (latent units), as the official `aspect_ratio_to_image_size`: pixel sides rounded to the
  nearest multiple of spatial_factor x patch_size (Python's round, half to even)."""
  rw, rh = (int(v) for v in aspect_ratio.split(":"))
  ratio, area, multiple = rw / rh, float(side * spatial_factor)**2, spatial_factor * patch_size
  height = int(round(math.sqrt(area / ratio) / multiple)) * multiple
  width = int(round(math.sqrt(area * ratio) / multiple)) * multiple
  return height // spatial_factor, width // spatial_factor


def defaults_from_options(options: SamplingOptions, num_frames: int, latent_frames: int) -> dict:
  """`options` serialised as a model directory's `sampling_defaults` (with the training clip
  length in frames and latent frames); `options_from_defaults` reads them back."""
  base = SamplingOptions()
  defaults = {
      "method": options.method,
      "guidance": float(options.guidance),
      "jacobi_block_size": int(options.jacobi.block_size),
      "jacobi_threshold": float(options.jacobi.threshold),
      "jacobi_max_iter": int(options.jacobi.max_iter),
      "denoise": options.denoise,
      "noise_std": float(options.noise_std),
      "num_frames": int(num_frames),
      "latent_frames": int(latent_frames)
  }
  for name in ("denoise_step", "window", "context", "temperature", "fps", "aspect_ratio", "attn_temp",
               "guide_top"):  # where not the default
    if getattr(options, name) != getattr(base, name):
      defaults[name] = getattr(options, name)
  if options.prompt_template.active:
    defaults["prompt_template"] = options.prompt_template.to_dict()
  return defaults


def options_from_defaults(defaults: dict, **overrides) -> SamplingOptions:
  """The options a model directory recommends (its `sampling_defaults`: method, guidance, Jacobi
  settings, denoiser, sigma, clip length), with `overrides` on top; overrides that are None are
  ignored. The default window is the training clip length in latent frames."""
  values = {key: value for key, value in overrides.items() if value is not None}
  pick = lambda key, fallback: values.pop(key, defaults.get(key, fallback))
  base = JacobiOptions()
  jacobi_options = JacobiOptions(block_size=int(pick("jacobi_block_size", base.block_size)),
                                 threshold=float(pick("jacobi_threshold", base.threshold)),
                                 max_iter=int(pick("jacobi_max_iter", base.max_iter)),
                                 fallback_after=pick("jacobi_fallback", base.fallback_after))
  stored = {
      name: defaults[name]
      for name in ("denoise", "denoise_step", "context", "temperature", "fps", "aspect_ratio", "attn_temp", "guide_top")
      if name in defaults and name not in values
  }
  if "prompt_template" not in values:
    stored["prompt_template"] = PromptTemplate.from_dict(defaults.get("prompt_template", {}))
  return SamplingOptions(method=pick("method", "auto"),
                         guidance=float(pick("guidance", 0.0)),
                         jacobi=jacobi_options,
                         noise_std=float(pick("noise_std", 0.0)),
                         window=pick("window", defaults.get("latent_frames", defaults.get("num_frames"))),
                         **stored,
                         **values)


def _under_attention_temperature(temperature: float, fn):
  """`fn` tracing its attention at `temperature` (1: unchanged)."""
  if temperature == 1.0:
    return fn

  @functools.wraps(fn)
  def tempered(*args, **kwargs):
    with layers.attention_temperature(temperature):
      return fn(*args, **kwargs)

  return tempered


class VideoSampler:
  """Samples a trained model (a `ModelBundle` read from a model directory)."""

  def __init__(self,
               bundle: ModelBundle,
               options: SamplingOptions = SamplingOptions(),
               text_encoder=None,
               mesh: jax.sharding.Mesh | None = None):
    """`text_encoder`: prompts -> embeddings [B, L, txt_dim] for models trained on an external,
    frozen encoder (e.g. `starflow_jax.text.t5.T5TextEncoder` for Flan-T5); the null condition
    is its encoding of the empty prompt. `mesh`: devices to sample on (default: one device, or
    all devices when there are several processes)."""
    if mesh is None and jax.process_count() > 1:
      mesh = sharding.make_mesh((-1, 1, 1))
    self.mesh = None if mesh is None else host_major_mesh(mesh.devices.flat)
    self.external_text_encoder = text_encoder
    self.bundle = bundle
    self.config = bundle.config
    self.options = options.validate()
    self.params = self._replicate(bundle.params)
    self.text_params = self._replicate(bundle.text_params)
    self.autoencoder = build_autoencoder(bundle.autoencoder_config, mesh=self.mesh)
    self.model = StarFlow(self.config)
    self.deep = model_lib.deep_block(self.config)
    self.text_encoder = TextEncoder(bundle.text_config) if bundle.text_config else None
    denoise = options.denoise
    if denoise == "auto":
      denoise = "learned" if self.config.learnable_self_denoiser and options.noise_std > 0 else "none"
    if denoise == "learned" and not self.config.learnable_self_denoiser:
      raise UserError("denoise='learned' but the model has no denoiser; use 'score' or 'none'")
    if denoise in ("learned", "score") and options.noise_std <= 0:
      raise UserError(f"denoise={denoise!r} needs the training noise level: set noise_std > 0")
    self.denoise_mode = denoise
    self.jacobi_options = None if options.method == "sequential" else options.jacobi
    self.block_inverse = inverse.block_inverse_for(self.jacobi_options)
    # Per flow block: the deep block's Jacobi options (None: token by token) for its first
    # frame's blocks (tokens before `deep_split`) and after, and the shallow blocks' inverses;
    # method 'auto' sets them from `plan` at the first sampling call.
    self.deep_first_options = self.deep_options = self.jacobi_options
    self.deep_split = 0
    self.shallow_inverses = (self.block_inverse,) * (self.config.num_blocks - 1)
    self.plan: dict[str, str] | None = None
    # Compiled pieces: one compile per distinct static shape, reused for every frame and window.
    # Parameters are arguments (never compile-time constants), so `set_params` reuses them all.
    self._encode_text = jax.jit(self._encode_text_impl)
    # The inversion's pieces trace under the options' attention temperature, as `inverse.invert`
    # (the shallow forward of prefix frames, `_prefix_tokens`, does not; their deep-block cache
    # entries are written under it, where the official computes its I2V context at temperature 1).
    tempered = functools.partial(_under_attention_temperature, options.attn_temp)
    self._start = jax.jit(tempered(self._start_impl), static_argnums=(3, 4))
    self._write_actions = jax.jit(self._write_actions_impl, static_argnums=(3,), donate_argnums=(0,))
    self._prefill = jax.jit(tempered(self._prefill_impl), static_argnums=(3,), donate_argnums=(1,))
    self._run = jax.jit(tempered(self._run_impl), static_argnums=(4, 5, 6, 7, 8), donate_argnums=(1,))
    self._reencode = jax.jit(tempered(self._reencode_impl), static_argnums=(4, 5), donate_argnums=(1,))
    self._roll = jax.jit(self._roll_impl, donate_argnums=(0, 1))
    self._frame_tokens = jax.jit(self._frame_tokens_impl, static_argnums=(2, 3))
    self._shallow_compiled = jax.jit(tempered(self._shallow_impl), static_argnums=(3, 4, 5, 6))
    self._iterations = jax.jit(tempered(functools.partial(inverse.block_iterations, self.config)),
                               static_argnums=(2, 4, 5, 6))
    self._prefix_tokens = jax.jit(functools.partial(inverse.prefix_tokens, self.config))
    self._denoiser = jax.jit(lambda p, x, c: self.model.apply({"params": p}, x, c, method=StarFlow.denoise))
    self._score_step = jax.jit(self._score_step_impl)
    self._take_frames = jax.jit(lambda x, start, count: jax.lax.dynamic_slice_in_dim(x, start, count, axis=1),
                                static_argnums=(2,))
    self._merge_frames = jax.jit(_merge_frames)

  @property
  def latent_size(self) -> tuple[int, int]:
    """(height, width) of the sampled latents: the training size, or the options' aspect ratio."""
    if self.options.aspect_ratio == "1:1" and not self.options.prompt_template.aspect_ratio:
      return self.config.img_size, self.config.img_size
    return latent_size(self.config.img_size, self.autoencoder.spatial_factor, self.config.patch_size,
                       self.options.aspect_ratio)

  @property
  def pixel_size(self) -> tuple[int, int]:
    """(height, width) of the generated frames."""
    return tuple(side * self.autoencoder.spatial_factor for side in self.latent_size)

  def set_params(self, params, text_params=None) -> None:
    """Swaps in new parameters of the same shapes (e.g. during training): no recompilation
    (method 'auto' measures its plan again: convergence depends on the weights)."""
    self.params = self._replicate(params)
    if text_params is not None:
      self.text_params = self._replicate(text_params)
    if self.options.method == "auto":
      self.plan = None

  def _plan_once(self, noise, grid: TokenGrid, condition, guidance: float) -> None:
    """method 'auto' before its first frame: `choose_methods` on the call's first two frames."""
    if self.options.method == "auto" and self.plan is None:
      self.choose_methods(noise(0, 2), grid, condition(0), guidance)

  def choose_methods(self, z_frames: Array, grid: TokenGrid, deep_cond: Array | None, guidance: float) -> dict:
    """method 'auto': per flow block, Jacobi or token-by-token decoding, whichever is cheaper.

    The model's inverse decodes two frames of the call's own noise z_frames [B, 2, N, D] under
    its condition with Jacobi (`inverse.block_iterations`: the iterations of every Jacobi block
    of every flow block); a flow block keeps Jacobi where those iterations, each costing what
    `step_cost` measures for its block size in token steps (or options.iteration_cost), cost
    less than 0.9 of one step per token (`jacobi.pays_off`), else it decodes token by token.
    The deep block decides for its first frame ('deep_first': no earlier frame to start the
    iterations from) and for the later ones ('deep') apart. Measured once per parameters."""
    frames = TokenGrid(2, grid.height, grid.width)
    b, n = z_frames.shape[0], frames.tokens_per_frame
    actions = None if not self.config.num_actions else jnp.full((b, 2), self.config.num_actions, jnp.int32)
    guide_top = self.options.guide_top is not None
    record = jax.device_get(
        self._iterations(self.params, z_frames, frames, deep_cond, guidance, self.jacobi_options, guide_top, actions))
    deep_blocks = jacobi.block_schedule(0, frames.num_tokens, n, self.jacobi_options)
    k = sum(a < n for a, _ in deep_blocks)  # the first frame's Jacobi blocks; frame 1 starts at the next
    self.deep_split = deep_blocks[k][0]
    cost = self._iteration_cost("deep", self.deep, model_lib.deep_params(self.params), z_frames.reshape(b, 2 * n, -1),
                                frames, deep_cond, guidance, deep_blocks, actions)
    sizes = [m for _, m in deep_blocks]
    pick = lambda its, sizes, cost: "jacobi" if not len(its) or jacobi.pays_off(its, sizes, cost) else "sequential"
    plan = {"deep_first": pick(record[0][:k], sizes[:k], cost), "deep": pick(record[0][k:], sizes[k:], cost)}
    s_grid = model_lib.shallow_grid(self.config, frames)
    s_blocks = jacobi.block_schedule(0, s_grid.num_tokens, n, self.jacobi_options)
    s_cond, s_guidance = inverse.shallow_condition(self.config, deep_cond, guidance, b, frames.frames, guide_top)
    for i, its in zip(reversed(range(self.config.num_blocks - 1)), record[1:]):
      cost = None  # a block without layers records no iterations: the identity either way
      if its.size:
        cost = self._iteration_cost(f"shallow_{i}", model_lib.shallow_block(self.config, i),
                                    model_lib.shallow_params(self.params, i),
                                    model_lib.to_shallow_batch(self.config, z_frames), s_grid, s_cond, s_guidance,
                                    s_blocks)
      plan[f"shallow_{i}"] = pick(its, [m for _, m in s_blocks], cost)
    return self._adopt(plan)

  def _iteration_cost(self, name, block, params, z, grid, cond, guidance, schedule, actions=None):
    """m -> one Jacobi iteration over m tokens of `block`, in token steps: options.iteration_cost,
    else measured (`step_cost.iteration_costs`)."""
    if self.options.iteration_cost:
      return lambda m: self.options.iteration_cost
    costs = step_cost.iteration_costs(block, params, z, grid, cond, guidance, [m for _, m in schedule],
                                      self.jacobi_options, actions)
    logging.getLogger(__name__).info("method auto: %s iteration costs in token steps %s", name, {
        m: round(c, 2) for m, c in costs.items()
    })
    return costs.__getitem__

  def _adopt(self, plan: dict) -> dict:
    """Sets the decoders from method 'auto''s plan (flow block name -> 'jacobi' / 'sequential')."""
    self.plan = plan
    chosen = lambda name: self.jacobi_options if plan[name] == "jacobi" else None
    self.deep_first_options, self.deep_options = chosen("deep_first"), chosen("deep")
    self.shallow_inverses = tuple(
        inverse.block_inverse_for(chosen(f"shallow_{i}")) for i in range(self.config.num_blocks - 1))
    logging.getLogger(__name__).info("method auto: %s", plan)
    return plan

  def _deep_calls(self, start: int, end: int, n: int):
    """(first, size, count, options) of the deep block's decoder calls for tokens [start, end):
    tokens before `deep_split` (the first frame's Jacobi blocks) with deep_first_options, the
    rest with deep_options (one schedule when they are the same)."""
    split = start if self.deep_first_options == self.deep_options else min(max(start, self.deep_split), end)
    for lo, hi, options in ((start, split, self.deep_first_options), (split, end, self.deep_options)):
      for first, size, count in jacobi.span_calls(lo, hi, n, options, per_frame=True):
        yield first, size, count, options

  # ------------------------------------------------------------------ placement
  def _replicate(self, tree):
    """Parameters on every device (as they are without a mesh), in one compiled copy: however
    they were placed (a training mesh, one device, host memory)."""
    if self.mesh is None or tree is None:
      return tree
    host_or_global = lambda x: x if isinstance(x, jax.Array) and not x.is_fully_addressable else np.asarray(x)
    return _replicate_fn(self.mesh)(jax.tree_util.tree_map(host_or_global, tree))

  def _batch_sharding(self, batch: int) -> NamedSharding:
    hosts, local = self.mesh.shape["host"], self.mesh.shape["local"]
    if batch % (hosts * local) == 0:
      return NamedSharding(self.mesh, P(("host", "local")))
    return NamedSharding(self.mesh, P("host") if batch % hosts == 0 else P())

  def place(self, x):
    """A batch-major array (numpy or jax, however placed) as a global array split over the
    devices (see the module docstring); unchanged without a mesh."""
    if self.mesh is None or x is None:
      return x
    if not (isinstance(x, jax.Array) and not x.is_fully_addressable):
      x = np.asarray(x)
    return jax.device_put(x, self._batch_sharding(x.shape[0]))

  def _normal(self, seed: int, shape) -> Array:
    """N(0, 1) noise of `shape`, created directly with its placement (the same numbers on any
    placement: threefry is partitionable)."""
    out = None if self.mesh is None else self._batch_sharding(shape[0])
    return _normal_fn(tuple(shape), out)(jax.random.PRNGKey(seed))

  def frame_noise(self, seed: int, batch: int, first: int, count: int) -> Array:
    """The sampling noise z [B, count, H, W, C] of latent frames first.. (temperature applied):
    each frame's from its own key, so a clip's noise does not depend on its length (a stream and
    `generate` draw the same numbers)."""
    height, width = self.latent_size
    frame_shape = (batch, height, width, self.config.in_channels)
    out = None if self.mesh is None else self._batch_sharding(batch)
    z = _frame_noise_fn(frame_shape, count, out)(jax.random.PRNGKey(seed), np.int32(first))
    return self.options.temperature * z

  def compiled_functions(self) -> list:
    """The jitted functions (their cache sizes count compilations)."""
    return [
        self._encode_text, self._start, self._write_actions, self._prefill, self._run, self._reencode, self._roll,
        self._frame_tokens, self._shallow_compiled, self._prefix_tokens, self._denoiser, self._score_step,
        self._take_frames, self._merge_frames, self._iterations
    ]

  # ------------------------------------------------------------------ conditions
  def _encode_text_impl(self, text_params, ids):
    return self.text_encoder.apply({"params": text_params}, ids)

  def prompt_texts(self, prompts: Sequence[str], num_frames: int | None = None) -> tuple[list[str], list[str]]:
    """(prompts, null prompts) as the text encoder reads them: the model's prompt template
    (`SamplingOptions.prompt_template`) applied to each and to the empty null prompt; a clip of
    one frame is an image (fps 0)."""
    o = self.options
    fps = 0 if num_frames == 1 or not self.config.is_video else o.fps
    template = functools.partial(o.prompt_template.apply, fps=fps, noise_std=o.noise_std, aspect_ratio=o.aspect_ratio)
    return template(prompts), template([""] * len(prompts))

  def encode_prompts(self, prompts: Sequence[str], num_frames: int | None = None) -> tuple[Array | None, Array | None]:
    """(condition, null condition) for the prompts: built-in text encoder, or class labels."""
    cfg = self.config
    if cfg.conditioning is None:
      return None, None
    if cfg.conditioning == "class":
      labels = np.asarray([int(p) for p in prompts], np.int32)
      return self.place(labels), self.place(np.full_like(labels, cfg.num_classes))
    prompts, null_prompts = self.prompt_texts(prompts, num_frames)
    if self.text_encoder is None:
      if self.external_text_encoder is not None:
        encode = self.external_text_encoder
        return self._checked_embeddings(encode(prompts)), self._checked_embeddings(encode(null_prompts))
      raise UserError("this model directory has no built-in text encoder; give the encoder it was "
                      "trained with (--t5=DIR for Flan-T5) or pass text embeddings (cond=...)")
    tokenizer = self.bundle.text_config.tokenizer
    for i, prompt in enumerate(prompts):
      if tokenizer.length(prompt) > tokenizer.max_length:
        raise UserError(f"prompt {i} ({prompt[:40]!r}...) is {tokenizer.length(prompt)} tokens long "
                        f"but this model reads at most {tokenizer.max_length} (model.txt_size, "
                        "<bos> included); shorten it")
    unknown = sorted({w for p in prompts for w in tokenizer.unknown_words(p)})
    if unknown:
      logging.warning("words not in the model's vocabulary become <unk>: %s (known: %s)", unknown,
                      ", ".join(tokenizer.vocabulary))
    ids = self.place(np.asarray(tokenizer.encode_batch(list(prompts))))
    null_ids = self.place(np.asarray(tokenizer.encode_batch(null_prompts)))
    return self._encode_text(self.text_params, ids), self._encode_text(self.text_params, null_ids)

  def _checked_embeddings(self, embeddings) -> Array:
    """An external text encoder's output, placed, after checking it is what the model reads."""
    want = (self.config.txt_size, self.config.txt_dim)
    if tuple(embeddings.shape[1:]) != want:
      raise UserError(f"the text encoder gives embeddings of [tokens, width] = {list(embeddings.shape[1:])} but "
                      f"the model reads {list(want)} (model.txt_size, model.txt_dim); use the encoder it was "
                      "trained with")
    return self.place(embeddings)

  # ------------------------------------------------------------------ public API
  def generate(self,
               prompts: Sequence[str] | None,
               num_frames: int,
               seed: int = 0,
               *,
               cond: Array | None = None,
               null_cond: Array | None = None,
               batch_size: int = 1,
               condition_video: np.ndarray | None = None,
               return_latents: bool = False,
               return_sequence: bool = False,
               actions=None):
    """Videos [B, T, H, W, C] in [-1, 1] (images [B, H, W, C] for image models).

    prompts: one per sample (or `cond` embeddings). condition_video: pixels [B or 1, Tc, H, W, C]
    in [-1, 1], used as the first Tc frames (image-to-video: Tc = 1; continuation and
    video-to-video: the source clip, with "(v2v) " leading the prompt for v2v). actions: action
    ids [B or 1, T'] per latent frame of an action-conditioned model (num_actions: the null one).
    """
    cfg = self.config
    cond, null_cond = self._conditions(prompts, cond, null_cond, num_frames)
    batch = cond.shape[0] if cond is not None else batch_size
    if not cfg.is_video and num_frames != 1:
      raise UserError(f"num_frames={num_frames}, but this is an image model; use num_frames=1")
    if num_frames < 1:
      raise UserError(f"num_frames={num_frames} must be >= 1")
    latent_frames = self.autoencoder.latent_frames(num_frames)
    z = self.frame_noise(seed, batch, 0, latent_frames)
    prefix = None
    if condition_video is not None:
      prefix = self._condition_latents(condition_video, batch, latent_frames, seed)
    if return_sequence:  # every stage decoded, no denoiser (the official return_sequence)
      stages = [self.autoencoder.decode(s) for s in self.sample_latents(z, cond, null_cond, prefix, True, actions)]
      return [s[:, 0] for s in stages] if not cfg.is_video else stages
    latents = self.sample_latents(z, cond, null_cond, prefix, actions=actions)
    latents = self.denoise(latents, cond)
    pixels = self.autoencoder.decode(latents)
    if not cfg.is_video:
      pixels, latents = pixels[:, 0], latents[:, 0]
    return (pixels, latents) if return_latents else pixels

  def stream(self,
             prompts: str | Sequence[str] | None,
             num_frames: int | None = None,
             seed: int = 0,
             *,
             cond: Array | None = None,
             null_cond: Array | None = None,
             batch_size: int = 1,
             condition_video: np.ndarray | None = None,
             actions=None) -> "VideoStream":
    """The video `generate` would make, as an iterator of pixel frames [B, H, W, C] in [-1, 1],
    each yielded as soon as it is final: deep block -> shallow blocks -> denoiser (which waits
    for its look-ahead) -> the autoencoder's next decode chunk. num_frames None: without end,
    through the sliding window (options.window); memory stays that of one window and nothing
    recompiles after the first window. `VideoStream.set_prompt` switches the condition.
    actions (action-conditioned models): ids [B or 1, T'] per latent frame, or a function
    frame -> ids [B] asked just before the frame is decoded (interactive control)."""
    cfg = self.config
    if not cfg.is_video:
      raise UserError("streaming needs a video model; this is an image model (use generate)")
    if not cfg.shallow_block_local or (self.jacobi_options is not None and self.jacobi_options.reference_compatible):
      raise UserError("streaming decodes frame by frame: it needs frame-local shallow blocks "
                      "(model.shallow_block_local) and a Jacobi without reference_compatible")
    if num_frames is not None and num_frames < 1:
      raise UserError(f"num_frames={num_frames} must be >= 1 (or None: without end)")
    latent_frames = None if num_frames is None else self.autoencoder.latent_frames(num_frames)
    self._window_frames(latent_frames)  # a stream without end needs a window: say so now
    prompts = [prompts] if isinstance(prompts, str) else prompts
    cond, null_cond = self._conditions(prompts, cond, null_cond, num_frames)
    batch = cond.shape[0] if cond is not None else batch_size
    video = VideoStream(self, batch, num_frames)
    video.condition(cond, null_cond)
    prefix = None
    if condition_video is not None:
      prefix = self._condition_latents(condition_video, batch, latent_frames or np.inf, seed)
    video.frames = self._stream_frames(video, latent_frames, seed, prefix,
                                       self._action_source(actions, batch, latent_frames))
    return video

  def _conditions(self, prompts, cond, null_cond, num_frames):
    """(condition, null condition), placed: encoded prompts, or the given embeddings."""
    if cond is None and prompts is not None:
      cond, null_cond = self.encode_prompts(prompts, num_frames)
    if self.config.conditioning is not None and cond is None:
      raise UserError("the model is conditioned: give prompts (or cond embeddings)")
    return self.place(cond), self.place(null_cond)

  def _action_source(self, actions, batch: int, latent_frames: int | None):
    """frame -> action ids [B] for `_deep_frames` from ids [B or 1, T'] or a function (checked)."""
    count = self.config.num_actions
    if actions is None:
      return None
    if not count:
      raise UserError("this model takes no actions (model.num_actions = 0); leave actions out")

    def checked(frame: int, ids) -> np.ndarray:
      ids = np.broadcast_to(np.asarray(ids, np.int64).reshape(-1), (batch,))
      if ids.min() < 0 or ids.max() > count:
        raise UserError(f"action ids of frame {frame} are {ids.tolist()}; the model knows 0..{count - 1} "
                        f"({count}: no action)")
      return ids.astype(np.int32)

    if callable(actions):
      return lambda frame: checked(frame, actions(frame))
    table = np.asarray(actions)
    table = table[None] if table.ndim == 1 else table
    if table.ndim != 2 or table.shape[0] not in (1, batch) or (latent_frames and table.shape[1] < latent_frames):
      raise UserError(f"actions of shape {list(np.shape(actions))}: give [batch, frames] ids with a batch of 1 or "
                      f"{batch} and at least {latent_frames} latent frames")
    return lambda frame: checked(frame, table[:, frame] if frame < table.shape[1] else count)

  def _stream_frames(self,
                     video: "VideoStream",
                     latent_frames: int | None,
                     seed: int,
                     prefix: Array | None,
                     action_at=None):
    """The generator behind `stream`: pixel frames [B, H, W, C] as they become final."""
    p, batch = self.config.patch_size, video.batch
    height, width = self.latent_size
    frame_grid = TokenGrid(1, height // p, width // p)
    noise = lambda first, count: tokens.patchify(self.frame_noise(seed, batch, first, count), p)[0]
    prefix_tok = None if prefix is None else self._prefix_tokens(self.params, prefix, video.cond)
    deep = self._deep_frames(noise, latent_frames, frame_grid, video.condition_at, video.guidance, prefix_tok, batch,
                             action_at)
    noisy, conds = {}, {}  # latent frame -> noisy latents [B, 1, H, W, C] and its condition

    def decode_until(count: int) -> None:  # latent frames [0, count) through the flow's inverse
      while video.frames_decoded < count:
        f, deep_tokens = next(deep)
        h = self._shallow(self.params, deep_tokens[:, None], video.deep_cond, frame_grid, video.guidance)
        x = tokens.unpatchify(h, frame_grid, p)
        noisy[f] = x if prefix is None or f >= prefix.shape[1] else prefix[:, f:f + 1]
        conds[f], video.frames_decoded = video.cond, f + 1

    window, windows = self._denoise_schedule(latent_frames)
    decoder = self.autoencoder.decoder()
    for start, keep in windows:
      end = start + window
      for old in [g for g in noisy if g < start]:  # memory: one denoising window of latents
        del noisy[old], conds[old]
      for f in range(keep, end):
        decode_until(self._denoised_after(f, end))
        x = noisy[f]
        if self.denoise_mode != "none":  # frames past what frame f depends on are zeros
          chunk = jnp.concatenate([noisy.get(g, jnp.zeros_like(x)) for g in range(start, end)], axis=1)
          x = self._denoise_fn(conds[f])(chunk)[:, f - start:f - start + 1]
        yield from _frames_of(decoder.push(x))
    yield from _frames_of(decoder.finish())

  def _condition_latents(self, video, batch: int, latent_frames: int, seed: int) -> Array:
    video = np.asarray(video, np.float32)
    if video.ndim == 4:  # one image per sample
      video = video[:, None]
    if video.shape[0] == 1 and batch > 1:
      video = np.broadcast_to(video, (batch,) + video.shape[1:])
    if video.shape[0] != batch:
      raise UserError(f"the conditioning video has batch {video.shape[0]} but {batch} samples "
                      "are requested; give one clip, or one per sample")
    expected = self.pixel_size
    if tuple(video.shape[2:4]) != expected:
      raise UserError(f"conditioning frames are {video.shape[2]}x{video.shape[3]} but the model "
                      f"generates {expected[0]}x{expected[1]}; resize them first")
    latents = self.autoencoder.encode(self.place(video))
    if latents.shape[1] >= latent_frames:
      raise UserError(f"the conditioning clip has {latents.shape[1]} latent frames but only "
                      f"{latent_frames} are generated; ask for more frames")
    noise = self._normal(seed + 1, latents.shape)
    return latents + self.options.noise_std * noise  # the model was trained on noisy latents

  # ------------------------------------------------------------------ flow inverse
  def sample_latents(self,
                     z: Array,
                     cond: Array | None,
                     null_cond: Array | None,
                     prefix: Array | None = None,
                     return_sequence: bool = False,
                     actions=None):
    """Inverts the flow: noise z [B, T, H, W, C] -> noisy latents x~ (prefix frames kept).

    `inverse.invert`, scheduled frame by frame over the same pieces (`decoding`, `jacobi`,
    `inverse.shallow_inverse`): the deep block in compiled calls of about one frame, windows
    slid on the host, a frame's shallow inverses as soon as it is done. return_sequence: the
    latents after every stage instead, [z, deep block, each shallow block] (the last is x~), as
    the official `return_sequence`."""
    cfg = self.config
    z_tok, grid = tokens.patchify(z, cfg.patch_size)  # [B, T, N, D]
    action_at = self._action_source(actions, z_tok.shape[0], z_tok.shape[1])  # ids per latent frame (see `generate`)
    deep_cond, guidance = inverse.guided_condition(cfg, cond, null_cond, self.options.guidance,
                                                   self.bundle.null_condition)
    prefix_tok = None
    if prefix is not None:
      prefix_tok = self._prefix_tokens(self.params, prefix, cond)  # deep-block inputs [B, Tp, N, D]
    frame_grid = TokenGrid(1, grid.height, grid.width)
    # Frame-by-frame shallow decoding changes Jacobi's batch-wide stop statistic, so the
    # reference-compatible mode decodes the whole clip at once, as the official sampler does.
    pipelined = cfg.shallow_block_local and not (self.jacobi_options is not None and
                                                 self.jacobi_options.reference_compatible)
    if pipelined:
      frames: list = [None] * z_tok.shape[1]

      def on_frame(f, deep_tokens):  # pipelined: a frame's shallow inverses as soon as it is done
        out = self._shallow(self.params, deep_tokens[:, None], deep_cond, frame_grid, guidance, return_sequence)
        frames[f] = (deep_tokens[:, None], out) if return_sequence else out

      self._deep_inverse(z_tok, grid, deep_cond, guidance, prefix_tok, on_frame, action_at)
      if return_sequence:  # per stage, the frames in order
        deep = jnp.concatenate([f[0] for f in frames], axis=1)
        stages = [jnp.concatenate([f[1][1][i] for f in frames], axis=1) for i in range(cfg.num_blocks - 1)]
        h = stages[-1]
      else:
        h = jnp.concatenate(frames, axis=1)
    else:
      h = deep = self._deep_inverse(z_tok, grid, deep_cond, guidance, prefix_tok, None, action_at)
      h = self._shallow(self.params, h, deep_cond, grid, guidance, return_sequence)
      if return_sequence:
        h, stages = h
    x = self._with_prefix(tokens.unpatchify(h, grid, cfg.patch_size), prefix)
    if not return_sequence:
      return x
    return [z, self._with_prefix(tokens.unpatchify(deep, grid, cfg.patch_size), prefix)
           ] + [self._with_prefix(tokens.unpatchify(s, grid, cfg.patch_size), prefix) for s in stages]

  @staticmethod
  def _with_prefix(x: Array, prefix: Array | None) -> Array:
    return x if prefix is None else x.at[:, :prefix.shape[1]].set(prefix)

  def _deep_inverse(self, z_tok, grid, cond, guidance: float, prefix_tok, on_frame, action_at=None):
    """The deep block's inverse of raster noise tokens [B, T, N, D] (`_deep_frames` over the
    whole clip); returns raster tokens [B, T, N, D], calling on_frame(f, tokens) per frame."""
    b, t = z_tok.shape[:2]
    padded = jnp.concatenate([z_tok, jnp.zeros_like(z_tok)], axis=1)  # noise asked past the end
    noise = lambda first, count: self._take_frames(padded, np.int32(first), count)
    bar = tqdm.tqdm(total=t,
                    desc="deep block",
                    unit="frame",
                    disable=not self.options.progress or not distributed.is_primary(),
                    leave=False)
    frames = []
    for f, deep_tokens in self._deep_frames(noise, t, grid, lambda frame: cond, guidance, prefix_tok, b, action_at):
      if on_frame is not None:
        on_frame(f, deep_tokens)
      frames.append(deep_tokens)
      bar.update(1)
    bar.close()
    return jnp.stack(frames, axis=1)

  def _window_frames(self, num_frames: int | None) -> tuple[int, int]:
    """(window, context) in latent frames for a clip of `num_frames` (None: without end)."""
    if num_frames is None and self.options.window is None:
      raise UserError("a stream without num_frames needs a sliding window: set window (and context) "
                      "in the sampling options (--window=...)")
    window = self.options.window if num_frames is None else min(num_frames, self.options.window or num_frames)
    context = self.options.context if self.options.context is not None else window - 1
    if num_frames is None and context < 1:
      raise UserError(f"window={window} leaves no context for a stream without end; use window >= 2")
    return window, context

  def _deep_frames(self,
                   noise,
                   num_frames: int | None,
                   grid,
                   condition,
                   guidance: float,
                   prefix_tok,
                   batch: int,
                   action_at=None):
    """Yields (frame, raster tokens [B, N, D]) of the deep block's inverse, each once it is final.

    noise(first, count): raster noise tokens [B, count, N, D] of frames first.. (any values past
    the last frame); num_frames None: without end. condition(frame): the deep block's condition
    for a frame; where it changes (a stream's `set_prompt`), the window restarts at that frame
    from the last `context` frames under the new condition. Past the first window the token buffer and the
    noise keep `window` frames, rolled forward on the device as the window slides (memory flat
    in length), except for the official-compatible Jacobi, whose buffer holds the whole clip.
    Slides re-encode the last `context` frames (positions restart), as the official sampler.
    action_at(frame): the action ids [B] of a frame, asked for just before it is decoded (an
    action-conditioned model; None: the null action)."""
    n = grid.tokens_per_frame
    self._plan_once(noise, grid, condition, guidance)
    window, context = self._window_frames(num_frames)
    rolling = context >= 1 and not (self.jacobi_options is not None and self.jacobi_options.reference_compatible)
    span = window if rolling else num_frames  # frames in the buffer
    total = None if num_frames is None else num_frames * n
    window_grid = TokenGrid(window, grid.height, grid.width)
    permuted = lambda x: tokens.permute(x.reshape(batch, -1, x.shape[-1]), self.deep.order, n).astype(jnp.float32)
    params, cond = self.params, condition(0)
    z_perm = permuted(noise(0, span))
    state = self._start(params, z_perm, cond, window_grid, guidance)
    base = start = acted = 0  # token indices: the buffer's first, the next to decode; frames with actions

    def with_actions(state, frames: int):  # the actions of frames [acted, frames) written
      nonlocal acted
      for f in range(acted, frames if action_at is not None else acted):
        ids = self.place(np.asarray(action_at(f), np.int32).reshape(batch))
        state = self._write_actions(state, ids, np.int32((f - base // n) * n), n)
      acted = max(acted, frames)
      return state

    if prefix_tok is not None:
      p_perm = permuted(prefix_tok)
      if p_perm.shape[1] > window * n:
        raise UserError(f"the conditioning clip ({prefix_tok.shape[1]} frames) is longer than the "
                        f"window ({window} frames)")
      state = self._prefill(params, with_actions(state, prefix_tok.shape[1]), p_perm, window_grid)
      start = p_perm.shape[1]
    for f in range(start // n):
      yield f, self._frame_tokens(state.buffer, np.int32(f), n, batch)
    target = window * n if total is None else min(total, window * n)
    while total is None or start < total:
      if start == target or condition(start // n) is not cond:  # slide the window, or a new condition
        cond, context_start = condition(start // n), max(start - context * n, 0)
        if start == 0:
          state, acted = self._start(params, z_perm, cond, window_grid, guidance), 0
        else:
          if rolling and context_start > base:
            state, z_perm = self._roll(state, z_perm, permuted(noise(base // n + span, span)),
                                       np.int32(context_start - base))
            base = context_start
          state = self._reencode(params, state, cond, np.int32(start - base), start - context_start, window_grid)
        target = context_start + window * n if total is None else min(total, context_start + window * n)
      for first, size, count, options in self._deep_calls(start, target, n):
        if first % n == 0 and condition(first // n) is not cond:
          break
        state = with_actions(state, (first + size * count - 1) // n + 1)
        state = self._run(params, state, z_perm, first - base, size, count, window_grid, guidance, options)
        previous, start = start, first + size * count
        for f in range(previous // n, start // n):
          yield f, self._frame_tokens(state.buffer, np.int32(f - base // n), n, batch)

  # ------------------------------------------------------------------ compiled implementations
  def _start_impl(self, params, z_perm, cond, grid, guidance):
    actions = None  # action-conditioned: every token's action the null one until it is written
    if self.config.num_actions:
      actions = jnp.full(z_perm.shape[:2], self.config.num_actions, jnp.int32)
    return decoding.start_decoding(self.deep, model_lib.deep_params(params), z_perm, grid, cond, guidance > 0, actions)

  def _write_actions_impl(self, state: DecodeState, ids, first, n: int):
    """Frame actions ids [B] written for the n tokens of the frame starting at token `first`."""
    return decoding.write_actions(self.deep, state, jnp.repeat(ids.astype(jnp.int32)[:, None], n, axis=1), first)

  def _prefill_impl(self, params, state: DecodeState, p_perm, grid):
    return decoding.prefill_tokens(self.deep, model_lib.deep_params(params), state, p_perm, grid, self.config.cond_len)

  def _run_impl(self, params, state, z_perm, first, size, count, grid, guidance, options):
    state, _ = jacobi.decode_span(self.deep, model_lib.deep_params(params), state, z_perm, first, size, count, grid,
                                  self.config.cond_len, guidance, options)
    return state

  def _reencode_impl(self, params, state: DecodeState, cond, start, context_tokens: int, grid):
    return decoding.reencode_context(self.deep, model_lib.deep_params(params), state, cond, start, context_tokens, grid,
                                     self.config.cond_len)

  def _roll_impl(self, state: DecodeState, z_perm, next_perm, shift):
    """The buffer and noise (block order, [B', F*N] tokens) moved `shift` tokens forward, the
    noise of the F frames after them (`next_perm`) filling the end (the initial iterate there)."""
    size = z_perm.shape[1]
    reps = state.buffer.shape[0] // next_perm.shape[0]
    body = jnp.concatenate([state.buffer[:, 1:], jnp.concatenate([next_perm] * reps, axis=0)], axis=1)
    buffer = jnp.concatenate([state.buffer[:, :1], jax.lax.dynamic_slice_in_dim(body, shift, size, axis=1)], axis=1)
    z_perm = jax.lax.dynamic_slice_in_dim(jnp.concatenate([z_perm, next_perm], axis=1), shift, size, axis=1)
    actions = state.actions
    if actions is not None:  # the new frames' actions are written before they are decoded
      actions = jnp.concatenate([actions, jnp.full_like(actions, self.config.num_actions)], axis=1)
      actions = jax.lax.dynamic_slice_in_dim(actions, shift, size, axis=1)
    return state.replace(buffer=buffer, actions=actions), z_perm

  def _frame_tokens_impl(self, buffer, frame, n: int, batch: int):
    """Raster tokens [B, N, D] of a finished frame (the deep block's orders are per frame)."""
    x = jax.lax.dynamic_slice_in_dim(buffer[:batch], 1 + frame * n, n, axis=1)
    return tokens.unpermute(x, self.deep.order, n)

  def _shallow(self, params, h, deep_cond, grid, guidance, return_sequence=False):
    """The shallow blocks' inverses of deep-block tokens h [B, T, N, D], each by its own method."""
    return self._shallow_compiled(params, h, deep_cond, grid, guidance, return_sequence, self.shallow_inverses)

  def _shallow_impl(self, params, h, deep_cond, grid, guidance, return_sequence, inverses):
    return inverse.shallow_inverse(self.config, params, h, grid, deep_cond, guidance, inverses, self.options.guide_top
                                   is not None, return_sequence)

  def _score_step_impl(self, params, x, cond, sigma):

    def total_nll(x):
      out = self.model.apply({"params": params}, x, cond)
      return jnp.sum(losses.total_nll(out.z, out.logdets))

    return x - sigma * sigma * jax.grad(total_nll)(x)  # x + sigma^2 grad log p(x)

  # ------------------------------------------------------------------ denoising
  def denoise(self, latents: Array, cond: Array | None) -> Array:
    """The final denoising step on noisy latents x~ (see the module docstring)."""
    if self.denoise_mode == "none":
      return latents
    return self._windowed(latents, self._denoise_fn(cond))

  def _denoise_fn(self, cond: Array | None):
    """Noisy latents [B, T, H, W, C] -> denoised (the learned denoiser or the flow's score)."""
    sigma = self.options.noise_std
    if self.denoise_mode == "score":
      return lambda x: self._score_step(self.params, x, cond, sigma)
    step = sigma if self.options.denoise_step is None else self.options.denoise_step
    return lambda x: x - step * self._denoiser(self.params, x, cond)

  def _denoise_schedule(self, num_frames: int | None):
    """(window length, its (start, keep) pairs): the denoiser runs on windows of `window` frames
    (inputs always the noisy latents); frames [keep, start + window) come from the one at
    `start`, the first that covers them with `denoiser_window` frames of overlap behind them."""
    cfg = self.config
    window = self._window_frames(num_frames)[0] if cfg.is_video else 1
    overlap = min(window - 1, cfg.denoiser_window if cfg.denoiser_window is not None else window - 1)
    return window, denoise_windows(num_frames, window, overlap)

  def _windowed(self, latents: Array, fn) -> Array:
    """fn on the denoising windows of a clip (`_denoise_schedule`), merged."""
    t = latents.shape[1] if self.config.is_video else 1
    window, windows = self._denoise_schedule(t)
    if window >= t:
      return fn(latents)
    out = latents
    for start, keep in windows:  # every window has the same length and dynamic offsets: no recompilation
      chunk = fn(self._take_frames(latents, np.int32(start), window))
      out = self._merge_frames(out, chunk, np.int32(start), np.int32(keep))
    return out

  def _denoised_after(self, frame: int, window_end: int) -> int:
    """The latent frames (a count from 0) that frame `frame`'s denoised value depends on, in a
    denoising window ending at `window_end`: the learned denoiser looks A - 1 frames ahead per
    layer (A = temporal_causal; 0 = the whole window), the flow's score sees the whole window."""
    cfg = self.config
    if self.denoise_mode == "none":
      return frame + 1
    if self.denoise_mode == "learned" and cfg.temporal_causal >= 1:
      return min(window_end, frame + 1 + cfg.denoiser_layers * (cfg.temporal_causal - 1))
    return window_end


class VideoStream:
  """One streamed video (`VideoSampler.stream`): iterate it for pixel frames [B, H, W, C] in
  [-1, 1]; `set_prompt` switches the condition. frames_decoded: latent frames the flow has
  inverted so far (the denoiser's look-ahead and the decoder's chunks keep it ahead of the
  frames yielded)."""

  def __init__(self, sampler: VideoSampler, batch: int, num_frames: int | None):
    self.sampler, self.batch, self.num_frames = sampler, batch, num_frames
    self.frames_decoded, self.frames = 0, iter(())
    self.cond = self.deep_cond = None
    self.guidance = 0.0
    self._switches = []  # [(latent frame, cond, null_cond)] in frame order

  def __iter__(self):
    return self

  def __next__(self) -> Array:
    return next(self.frames)

  def condition(self, cond: Array | None, null_cond: Array | None) -> None:
    """Conditions the frames from now on (the stream's inverse reads `deep_cond`)."""
    sampler = self.sampler
    self.cond = cond
    self.deep_cond, self.guidance = inverse.guided_condition(sampler.config, cond, null_cond, sampler.options.guidance,
                                                             sampler.bundle.null_condition)

  def condition_at(self, frame: int):
    """The deep block's condition for latent frame `frame`, after the switches due by then."""
    while self._switches and self._switches[0][0] <= frame:
      self.condition(*self._switches.pop(0)[1:])
    return self.deep_cond

  def set_prompt(self,
                 prompts: str | Sequence[str] | None = None,
                 *,
                 cond: Array | None = None,
                 null_cond: Array | None = None,
                 frame: int | None = None) -> int:
    """Conditions the latent frames from `frame` on (default: the next one the flow inverts) on
    `prompts` (or embeddings): there the deep block re-encodes its last `context` frames under
    them and goes on. Returns the latent frame the switch applies from."""
    frame = self.frames_decoded if frame is None else frame
    if frame < self.frames_decoded:
      raise UserError(f"latent frame {frame} is already inverted (the stream is at frame {self.frames_decoded}); "
                      f"switch at frame {self.frames_decoded} or later")
    prompts = [prompts] if isinstance(prompts, str) else prompts
    cond, null_cond = self.sampler._conditions(prompts, cond, null_cond, self.num_frames)
    if cond is not None and cond.shape[0] != self.batch:
      raise UserError(f"the new condition has batch {cond.shape[0]} but the stream has {self.batch}; "
                      "give one prompt per sample")
    self._switches = sorted(self._switches + [(frame, cond, null_cond)], key=lambda s: s[0])
    return frame


def _frames_of(pixels: Array | None):
  """The frames [B, H, W, C] of a decoded chunk [B, k, H, W, C] (none for None)."""
  for i in range(0 if pixels is None else pixels.shape[1]):
    yield pixels[:, i]


@functools.lru_cache(maxsize=None)
def _replicate_fn(mesh: Mesh):
  return jax.jit(lambda tree: tree, out_shardings=NamedSharding(mesh, P()))


def host_major_mesh(devices) -> Mesh:
  """`devices` as a ('host', 'local') mesh: one row per process, its devices in order."""
  devices = sorted(devices, key=lambda d: (d.process_index, d.id))
  hosts = len({d.process_index for d in devices})
  return Mesh(np.asarray(devices, dtype=object).reshape(hosts, -1), ("host", "local"))


@functools.lru_cache(maxsize=None)
def _frame_noise_fn(frame_shape: tuple[int, ...], count: int, out_sharding):
  """key, first -> N(0, 1) [B, count, ...]: frame first + i from fold_in(key, first + i)."""

  def noise(key, first):
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(first + jnp.arange(count))
    return jax.vmap(lambda k: jax.random.normal(k, frame_shape), out_axes=1)(keys)

  return jax.jit(noise) if out_sharding is None else jax.jit(noise, out_shardings=out_sharding)


@functools.lru_cache(maxsize=None)
def _normal_fn(shape: tuple[int, ...], out_sharding):
  if out_sharding is None:
    return jax.jit(lambda key: jax.random.normal(key, shape))
  return jax.jit(lambda key: jax.random.normal(key, shape), out_shardings=out_sharding)


def denoise_windows(num_frames: int | None, window: int, overlap: int):
  """(start, keep) of the denoising windows of `window` frames over a clip (None: without end):
  frames [keep, start + window) come from the window at `start`; windows advance by
  window - overlap, and the last is moved back to end with the clip."""
  written, start = 0, 0
  while num_frames is None or written < num_frames:
    if num_frames is not None:
      start = max(0, min(start, num_frames - window))
    yield start, max(written, start + (overlap if start > 0 else 0))
    written, start = start + window, start + window - overlap


def _merge_frames(out: Array, chunk: Array, start, keep) -> Array:
  """out with frames [keep, start + len(chunk)) taken from chunk (placed at `start`)."""
  placed = jax.lax.dynamic_update_slice_in_dim(jnp.zeros_like(out), chunk, start, axis=1)
  frame = jnp.arange(out.shape[1]).reshape((1, -1) + (1,) * (out.ndim - 2))
  return jnp.where((frame >= keep) & (frame < start + chunk.shape[1]), placed, out)
