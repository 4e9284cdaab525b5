"""Training: the train state, the pure train step, and `Trainer` (state creation and sharding).

One train step (ALGORITHM.md sections 6 and 7), `train_step(state, batch, ...)`, is four named
pieces:
  prepare_inputs     pixels -> [-1, 1] (+ uniform dequantisation) -> autoencoder latents ->
                     x~ = x + sigma * eps; captions replaced by the null caption with probability
                     drop_label (classifier-free guidance); first-frame drop for video
  batch_gradients    per microbatch: the flow loss (official get_loss) and its gradient with
                     respect to the parameters AND x~ in one backward pass; flow-score matching:
                     target = sigma * d(NLL of each example)/d x~ (stopped), MSE to the
                     denoiser's output; with train.grad_accum_steps = M the batch is M
                     microbatches in a `lax.scan`, gradients averaged (one optimizer update)
  guarded_update     global-norm clipping per group (flow / denoiser, each with its own AdamW),
                     the official grad skip (after `grad_skip_after` steps, skip an update whose
                     norm exceeds the clip), non-finite steps skipped without touching params or
                     optimizer state (counted); the parameters' EMA when train.ema_decay > 0
Video batches drop their first frame with probability drop_first_frame (a second compiled variant
of the step), captions then carry the "(extend)" tag, as officially.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from data_pipeline.pixels import pixels_to_unit
from starflow_jax import axes, experiment, losses, model as model_lib, sharding
from starflow_jax.config import ModelConfig
from starflow_jax.experiment import OptimizerSettings, StepSettings
from starflow_jax.model import StarFlow, example_condition, example_latents
from starflow_jax.text.encoder import TextEncoder
from starflow_jax.text.tokenizer import SPECIAL_TOKENS, BOS

Array = jnp.ndarray


@flax.struct.dataclass
class TrainState:
  """params: {'model': StarFlow params (flow blocks and 'denoiser'), 'text': text encoder params};
  ema_params: their exponential moving average (train.ema_decay > 0), else None."""

  step: Array
  params: Any
  opt_state: Any
  rng: Array
  skipped_steps: Array
  ema_params: Any = None


@dataclasses.dataclass(frozen=True, eq=False)
class StepModules:
  """What a train step applies: the modules, the frozen autoencoder, the null text embedding of
  pre-encoded data, the mesh and logical-axis rules (the layout of microbatches and activations).
  Static; hashed by identity."""

  model_config: ModelConfig
  model: StarFlow
  text_encoder: TextEncoder | None
  autoencoder: Any
  optimizer: optax.GradientTransformation
  mesh: jax.sharding.Mesh
  null_text_embedding: Array | None = None
  rules: tuple = sharding.DEFAULT_RULES  # logical -> mesh axes, for parameters and activations


def step_keys(rng: Array, step: Array) -> tuple[Array, Array, Array]:
  """The (noise, dequantisation, condition-drop) keys of training step `step`."""
  noise, deq, drop = jax.random.split(jax.random.fold_in(rng, step), 3)
  return noise, deq, drop


def unit_pixels(settings: StepSettings, deq_rng: Array, video: Array) -> Array:
  """Pixels in [-1, 1], uniformly dequantised with `deq_rng` when settings.dequantize."""
  return pixels_to_unit(video, deq_rng if settings.dequantize else None)


def dequantised_pixels(settings: StepSettings, rng: Array, step: Array, video: Array) -> Array:
  """The step's autoencoder input: pixels in [-1, 1] with its dequantisation noise."""
  _, deq_rng, _ = step_keys(rng, step)
  return unit_pixels(settings, deq_rng, video)


def flow_input(modules: "StepModules", settings: StepSettings, video: Array, deq_rng: Array,
               latents_given: bool) -> Array:
  """The flow's clean input of a batch's video: given latents as they are, else the autoencoder's
  latents of the dequantised pixels; [B, T, H, W, C], or [B, H, W, C] for an image model."""
  if settings.pre_encoded or latents_given:
    x = video.astype(jnp.float32)
  else:
    x = modules.autoencoder.encode(unit_pixels(settings, deq_rng, video))
  return x if modules.model_config.is_video else x[:, 0]


def _label_fn(params):
  """Optimizer group of every parameter: 'denoiser' for the denoiser network, else 'flow'."""

  def label(path, _):
    return "denoiser" if model_lib.is_denoiser_path(path) else "flow"

  return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(train: OptimizerSettings) -> optax.GradientTransformation:
  """AdamW with linear warm-up and cosine decay for the flow (official betas 0.9/0.95, wd 1e-4), and
  a separate AdamW (lr 1e-4, wd 1e-4, cosine) for the denoiser. Clipping happens in the step."""

  def schedule(peak, end):
    return optax.warmup_cosine_decay_schedule(init_value=min(end, 1e-6),
                                              peak_value=peak,
                                              warmup_steps=max(1, train.warmup_steps),
                                              decay_steps=train.num_steps,
                                              end_value=end)

  flow = optax.adamw(schedule(train.lr, train.min_lr), b1=train.b1, b2=train.b2, weight_decay=train.weight_decay)
  denoiser = optax.adamw(schedule(train.denoiser_lr, min(1e-6, train.denoiser_lr)),
                         weight_decay=train.denoiser_weight_decay)
  return optax.multi_transform({"flow": flow, "denoiser": denoiser}, _label_fn)


def _split_denoiser(tree):
  model, denoiser = model_lib.split_denoiser_params(tree["model"])
  return {**tree, "model": model}, denoiser


def _global_norm(tree) -> Array:
  leaves = jax.tree_util.tree_leaves(tree)
  if not leaves:
    return jnp.zeros((), jnp.float32)
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


def _clip(tree, norm, max_norm):
  scale = jnp.minimum(1.0, max_norm / (norm + 1e-12)) if max_norm > 0 else 1.0
  return jax.tree_util.tree_map(lambda g: g * scale, tree)


# ------------------------------------------------------------------------------ the step
def drop_conditions(modules: StepModules, settings: StepSettings, batch: dict[str, Array],
                    rng: Array) -> dict[str, Array]:
  """Classifier-free guidance dropout: each example's condition -> null with prob drop_label,
  and (independently) its per-frame actions -> the null action."""
  p, cfg = settings.drop_label, modules.model_config
  if p > 0 and "actions" in batch:
    actions = batch["actions"]
    drop = jax.random.bernoulli(jax.random.fold_in(rng, 1), p, (actions.shape[0], 1))
    batch = {**batch, "actions": jnp.where(drop, cfg.num_actions, actions)}
  if p <= 0 or cfg.conditioning is None:
    return batch
  key = {"text": "tokens", "class": "label"}[cfg.conditioning]
  if "text_embeddings" in batch:
    key = "text_embeddings"
  values = batch[key]
  drop = jax.random.bernoulli(rng, p, (values.shape[0],))
  if key == "tokens":
    null = jnp.zeros_like(values).at[:, 0].set(SPECIAL_TOKENS.index(BOS))
  else:  # labels or text embeddings: the model's null condition rule
    null = model_lib.null_condition(cfg, values, stored=modules.null_text_embedding)
  dropped = jnp.where(drop.reshape((-1,) + (1,) * (values.ndim - 1)), null, values)
  return {**batch, key: dropped}


def prepare_inputs(modules: StepModules, settings: StepSettings, state: TrainState, batch: dict[str, Array],
                   drop_first_frame: bool, latents_given: bool) -> tuple[Array, dict[str, Array]]:
  """(x~ [B, T, H, W, C] or [B, H, W, C], the condition inputs): the step's noisy latents and the
  captions / labels / embeddings after condition dropout. Random numbers come from the step's
  keys for the whole batch, so they do not depend on how the batch is split into microbatches."""
  noise_rng, deq_rng, drop_rng = step_keys(state.rng, state.step)
  x = flow_input(modules, settings, batch["video"], deq_rng, latents_given)
  conditions = {k: v for k, v in batch.items() if k != "video"}
  if drop_first_frame:
    x = x[:, 1:]
    if "actions" in conditions:
      conditions["actions"] = conditions["actions"][:, 1:]
    if "tokens" in conditions:
      tokens = conditions["tokens"]
      tag = jnp.full_like(tokens[:, :1], settings.extend_tag)
      conditions["tokens"] = jnp.concatenate([tokens[:, :1], tag, tokens[:, 1:-1]], axis=1)
  conditions = drop_conditions(modules, settings, conditions, drop_rng)
  x_noisy = x + settings.noise_std * jax.random.normal(noise_rng, x.shape)
  return x_noisy, conditions


def encode_condition(modules: StepModules, params, conditions: dict[str, Array]) -> Array | None:
  """The flow's condition: text embeddings (given, or from the built-in encoder), labels, None."""
  cfg = modules.model_config
  if cfg.conditioning == "text":
    if "text_embeddings" in conditions:
      return conditions["text_embeddings"]
    return modules.text_encoder.apply({"params": params["text"]}, conditions["tokens"])
  if cfg.conditioning == "class":
    return conditions["label"]
  return None


def batch_gradients(modules: StepModules, settings: StepSettings, params, x_noisy: Array,
                    conditions: dict[str, Array]) -> tuple[Any, dict[str, Array]]:
  """Gradients of one (micro)batch: the flow objective's for the flow (and text encoder), the
  flow-score-matching objective's for the denoiser; and the batch-mean statistics. The model's
  activations are laid out by the mesh's rules (`axes.constrain`: batch over data x fsdp)."""
  with axes.activation_sharding(modules.mesh, modules.rules):
    return _batch_gradients(modules, settings, params, x_noisy, conditions)


def _batch_gradients(modules: StepModules, settings: StepSettings, params, x_noisy: Array,
                     conditions: dict[str, Array]) -> tuple[Any, dict[str, Array]]:

  def flow_objective(params, x_noisy):
    cond = encode_condition(modules, params, conditions)
    out = modules.model.apply({"params": params["model"]}, x_noisy, cond, conditions.get("actions"))
    loss_z, loss_logdet = losses.flow_loss_terms(out.z, out.logdets)
    loss = jnp.mean(loss_z + loss_logdet)
    objective = loss
    if settings.latent_norm_reg > 0:
      objective = objective + settings.latent_norm_reg * sum(jnp.mean(jnp.square(o)) for o in out.outputs[1:-1])
    aux = {"loss": loss, "loss_z": jnp.mean(loss_z), "loss_logdet": jnp.mean(loss_logdet), "cond": cond}
    return objective, aux

  (_, aux), (grads, x_grad) = jax.value_and_grad(flow_objective, argnums=(0, 1), has_aux=True)(params, x_noisy)
  stats = {k: aux[k] for k in ("loss", "loss_z", "loss_logdet")}
  if settings.flow_score_matching:
    target = losses.flow_score_target(x_grad, settings.noise_std)
    cond = jax.lax.stop_gradient(aux["cond"])

    def denoiser_objective(denoiser_params):
      model_params = model_lib.with_denoiser_params(params["model"], denoiser_params)
      pred = modules.model.apply({"params": model_params}, x_noisy, cond, method=StarFlow.denoise)
      return jnp.mean(jnp.square(pred - target))

    stats["denoiser_loss"], denoiser_grads = jax.value_and_grad(denoiser_objective)(model_lib.denoiser_params(
        params["model"]))
    grads["model"] = model_lib.with_denoiser_params(grads["model"], denoiser_grads)
    stats["score_square"] = jnp.mean(jnp.square(target))
  elif model_lib.has_denoiser(params["model"]):
    grads["model"] = model_lib.with_denoiser_params(
        grads["model"], jax.tree_util.tree_map(jnp.zeros_like, model_lib.denoiser_params(params["model"])))
  return grads, stats


def accumulated_gradients(modules: StepModules, settings: StepSettings, params, x_noisy: Array,
                          conditions: dict[str, Array]) -> tuple[Any, dict[str, Array]]:
  """`batch_gradients` of the whole batch, as the mean over `grad_accum_steps` equal microbatches
  (a `lax.scan`): the big-batch gradient with the memory of one microbatch.

  Microbatch m holds rows m, m + M, m + 2M, ... so that each one is spread over every device of
  the data-parallel axes (the batch is sharded contiguously along its first axis)."""
  steps = settings.grad_accum_steps
  if steps == 1:
    return batch_gradients(modules, settings, params, x_noisy, conditions)
  split_spec = NamedSharding(modules.mesh, P(None, sharding.BATCH_AXES))

  def split(x):  # [B, ...] -> [M, B / M, ...]
    x = jnp.swapaxes(x.reshape((x.shape[0] // steps, steps) + x.shape[1:]), 0, 1)
    return jax.lax.with_sharding_constraint(x, split_spec)

  def body(total, micro):
    grads, stats = batch_gradients(modules, settings, params, *micro)
    return jax.tree_util.tree_map(jnp.add, total, (grads, stats)), None

  micro = jax.tree_util.tree_map(split, (x_noisy, conditions))
  first = jax.tree_util.tree_map(lambda x: x[0], micro)
  zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype),
                                 jax.eval_shape(functools.partial(batch_gradients, modules, settings, params), *first))
  total, _ = jax.lax.scan(body, zeros, micro)
  return jax.tree_util.tree_map(lambda x: x / steps, total)


def guarded_update(modules: StepModules, settings: StepSettings, state: TrainState, grads,
                   stats: dict[str, Array]) -> tuple[TrainState, dict[str, Array]]:
  """Clip each group, skip non-finite (and, officially, oversized) updates, apply AdamW, update
  the EMA; returns the new state and the step's metrics."""
  flow_grads, denoiser_grads = _split_denoiser(grads)
  flow_norm = _global_norm(flow_grads)
  metrics = {k: stats[k] for k in ("loss", "loss_z", "loss_logdet")}
  metrics["nll"] = stats["loss"] + losses.HALF_LOG_2PI
  if not settings.pre_encoded:
    metrics["bpd"] = losses.bits_per_dim(metrics["nll"])
  metrics["grad_norm"] = flow_norm
  clipped = _clip(flow_grads, flow_norm, settings.grad_clip)
  finite = jnp.isfinite(stats["loss"]) & jnp.isfinite(flow_norm)
  too_large = flow_norm > settings.grad_clip
  if settings.flow_score_matching:
    den_norm = _global_norm(denoiser_grads)
    metrics.update(denoiser_loss=stats["denoiser_loss"],
                   denoiser_grad_norm=den_norm,
                   score_norm=jnp.sqrt(stats["score_square"]))
    denoiser_grads = _clip(denoiser_grads, den_norm, settings.grad_clip)
    finite &= jnp.isfinite(stats["denoiser_loss"]) & jnp.isfinite(den_norm)
    too_large |= den_norm > settings.grad_clip
  if denoiser_grads is not None:
    clipped["model"] = model_lib.with_denoiser_params(clipped["model"], denoiser_grads)
  skip = ~finite
  if settings.grad_skip and settings.grad_clip > 0:
    skip |= too_large & (state.step >= settings.grad_skip_after)
  clipped = jax.tree_util.tree_map(lambda g: jnp.where(finite, g, 0.0), clipped)  # keep NaNs out of Adam
  updates, new_opt_state = modules.optimizer.update(clipped, state.opt_state, state.params)
  new_params = optax.apply_updates(state.params, updates)
  keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(skip, b, a), new, old)
  ema = state.ema_params
  if settings.ema_decay > 0:
    decay = settings.ema_decay
    ema = keep(jax.tree_util.tree_map(lambda e, p: decay * e + (1.0 - decay) * p, ema, new_params), ema)
  metrics["skipped"] = skip.astype(jnp.int32)
  new_state = state.replace(step=state.step + 1,
                            params=keep(new_params, state.params),
                            opt_state=keep(new_opt_state, state.opt_state),
                            ema_params=ema,
                            skipped_steps=state.skipped_steps + skip.astype(jnp.int32))
  return new_state, metrics


def train_step(state: TrainState,
               batch: dict[str, Array],
               *,
               modules: StepModules,
               settings: StepSettings,
               drop_first_frame: bool = False,
               latents_given: bool = False) -> tuple[TrainState, dict[str, Array]]:
  """One optimizer step on a global batch. `latents_given`: batch["video"] already holds the
  autoencoder's latents (encoded just before the step, `Trainer.encode_batch`)."""
  x_noisy, conditions = prepare_inputs(modules, settings, state, batch, drop_first_frame, latents_given)
  grads, stats = accumulated_gradients(modules, settings, state.params, x_noisy, conditions)
  return guarded_update(modules, settings, state, grads, stats)


def eval_nll(params,
             batch: dict[str, Array],
             rng: Array,
             *,
             modules: StepModules,
             settings: StepSettings,
             latents_given: bool = False) -> Array:
  """Exact NLL in nats per dimension of each example of a held-out batch, [B]: the training
  objective's input (dequantised pixels -> latents -> x~ = x + sigma eps) without condition
  dropout, every example under its own caption / label / actions."""
  deq_rng, noise_rng = jax.random.split(rng)
  x = flow_input(modules, settings, batch["video"], deq_rng, latents_given)
  x_noisy = x + settings.noise_std * jax.random.normal(noise_rng, x.shape)
  with axes.activation_sharding(modules.mesh, modules.rules):
    cond = encode_condition(modules, params, batch)
    out = modules.model.apply({"params": params["model"]}, x_noisy, cond, batch.get("actions"))
  return losses.nll_per_dim(out.z, out.logdets)


# ------------------------------------------------------------------------------ the trainer
class Trainer:
  """Static pieces of training (modules, optimizer, shardings) and the compiled step."""

  def __init__(self,
               config: ml_collections.ConfigDict,
               mesh: jax.sharding.Mesh,
               exp: experiment.Experiment | None = None):
    """`exp`: the config's `Experiment` when the caller has built it (the train loop)."""
    self.config = config
    self.mesh = mesh
    self.experiment = exp if exp is not None else experiment.Experiment.from_config(config)
    self.model_config = self.experiment.model
    self.text_config = self.experiment.text
    self.autoencoder = self.experiment.build_autoencoder(mesh)
    self.model = StarFlow(self.model_config)
    self.text_encoder = TextEncoder(self.text_config) if self.text_config else None
    self.optimizer = make_optimizer(self.experiment.optimizer)
    self.settings = self.experiment.step
    null = self.experiment.null_text_embedding  # the empty prompt's embedding, for pre-encoded text
    null_text_embedding = None if null is None else jnp.asarray(null)
    self.rules = self.experiment.mesh.rules
    self.modules = StepModules(self.model_config, self.model, self.text_encoder, self.autoencoder, self.optimizer, mesh,
                               null_text_embedding, self.rules)
    boxed = jax.eval_shape(self._boxed_state, jax.random.PRNGKey(0))
    self.state_shardings = sharding.logical_shardings(boxed, mesh, self.rules)
    self.abstract_state = jax.tree_util.tree_map(
        lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s), nn.unbox(boxed), self.state_shardings)
    self._compiled_steps: dict[Any, Any] = {}
    # An autoencoder that runs its own compiled steps (the WAN VAE, `jit_inside`) encodes each
    # batch just before the train step: traced inside it, its weights (GBs for WAN 2.2) would
    # become constants of the step's program. Same arithmetic, same random numbers.
    self.encodes_before_step = bool(getattr(self.autoencoder, "jit_inside", False)) and not self.settings.pre_encoded
    self._unit_pixels = jax.jit(functools.partial(dequantised_pixels, self.settings),
                                out_shardings=sharding.batch_sharding(mesh))
    self._eval_unit_pixels = jax.jit(functools.partial(unit_pixels, self.settings),
                                     out_shardings=sharding.batch_sharding(mesh))

  # ---------------------------------------------------------------- state
  def _boxed_params(self, rng):
    model_rng, text_rng = jax.random.split(rng)
    x = example_latents(self.model_config, 1, 2)
    cond = example_condition(self.model_config, 1)
    params = {"model": self.model.init(model_rng, x, cond, method=StarFlow.init_all)["params"]}
    if self.text_encoder is not None:
      tokens = jnp.zeros((1, self.text_config.tokenizer.max_length), jnp.int32)
      params["text"] = self.text_encoder.init(text_rng, tokens)["params"]
    return params

  def _boxed_state(self, rng):
    init_rng, state_rng = jax.random.split(rng)
    params = self._boxed_params(init_rng)
    return TrainState(step=jnp.zeros((), jnp.int32),
                      params=params,
                      opt_state=self.optimizer.init(params),
                      rng=state_rng,
                      skipped_steps=jnp.zeros((), jnp.int32),
                      ema_params=params if self.settings.ema_decay > 0 else None)

  def init_state(self, seed: int) -> TrainState:
    """A fresh state, created directly with its shardings (no host copy of the parameters)."""
    init = jax.jit(lambda rng: nn.unbox(self._boxed_state(rng)), out_shardings=self.state_shardings)
    return init(jax.random.PRNGKey(seed))

  def state_with_params(self, state: TrainState, model_params) -> TrainState:
    """Replaces the model parameters (e.g. imported official weights), resets the optimizer and
    starts the EMA (if any) from them."""
    params = {**state.params, "model": model_params}
    params = jax.device_put(params, self.state_shardings.params)
    opt_state = jax.jit(self.optimizer.init, out_shardings=self.state_shardings.opt_state)(params)
    ema = jax.tree_util.tree_map(jnp.copy, params) if state.ema_params is not None else None
    return state.replace(params=params, opt_state=opt_state, ema_params=ema)

  @property
  def null_condition(self):
    """The model's own null condition when it is not the default rule (pre-encoded text: the
    encoder's empty prompt [L, txt_dim]), stored with the exported model; else None."""
    return self.experiment.null_text_embedding

  def final_params(self, state: TrainState):
    """The parameters to export and sample: the EMA when train.ema_decay > 0."""
    return state.ema_params if state.ema_params is not None else state.params

  # ---------------------------------------------------------------- the step
  def encode_batch(self, state: TrainState, batch: dict[str, Array]) -> dict[str, Array]:
    """The batch with its video replaced by latents, encoded outside the train step with the
    step's own dequantisation noise (for `encodes_before_step` autoencoders)."""
    unit = self._unit_pixels(state.rng, state.step, batch["video"])
    return {**batch, "video": self.autoencoder.encode(unit)}

  def compiled_step(self, drop_first_frame: bool):
    """The jitted step (state donated), with the state's and the batch's shardings."""
    if drop_first_frame not in self._compiled_steps:
      self._compiled_steps[drop_first_frame] = jax.jit(functools.partial(train_step,
                                                                         modules=self.modules,
                                                                         settings=self.settings,
                                                                         drop_first_frame=drop_first_frame,
                                                                         latents_given=self.encodes_before_step),
                                                       in_shardings=(self.state_shardings,
                                                                     sharding.batch_sharding(self.mesh)),
                                                       out_shardings=(self.state_shardings,
                                                                      sharding.replicated(self.mesh)),
                                                       donate_argnums=(0,))
    return self._compiled_steps[drop_first_frame]

  def step(self, state: TrainState, batch: dict[str, Array], drop_first_frame: bool = False):
    if self.encodes_before_step:
      batch = self.encode_batch(state, batch)
    return self.compiled_step(drop_first_frame)(state, batch)

  def compiled_eval(self):
    """The jitted `eval_nll`: (params, batch, rng) -> per-example nats/dim [B] on every process."""
    if "eval" not in self._compiled_steps:
      self._compiled_steps["eval"] = jax.jit(functools.partial(eval_nll,
                                                               modules=self.modules,
                                                               settings=self.settings,
                                                               latents_given=self.encodes_before_step),
                                             in_shardings=(self.state_shardings.params,
                                                           sharding.batch_sharding(self.mesh), None),
                                             out_shardings=sharding.replicated(self.mesh))
    return self._compiled_steps["eval"]

  def evaluate(self, params, batch: dict[str, Array], rng: Array) -> Array:
    """Per-example nats/dim [B] of a held-out global batch under `params` (`eval_nll`)."""
    if self.encodes_before_step:  # with eval_nll's own dequantisation key
      deq_rng, _ = jax.random.split(rng)
      batch = {**batch, "video": self.autoencoder.encode(self._eval_unit_pixels(deq_rng, batch["video"]))}
    return self.compiled_eval()(params, batch, rng)

  def gradients(self, state: TrainState, batch: dict[str, Array], drop_first_frame: bool = False):
    """(gradients, statistics) of the step's objectives at `state` on `batch`, unclipped (with
    the state's shardings): what `train_step` applies; for tests and diagnostics."""

    def grads_of(state, batch):
      x_noisy, conditions = prepare_inputs(self.modules, self.settings, state, batch, drop_first_frame,
                                           self.encodes_before_step)
      return accumulated_gradients(self.modules, self.settings, state.params, x_noisy, conditions)

    if self.encodes_before_step:
      batch = self.encode_batch(state, batch)
    return jax.jit(grads_of,
                   in_shardings=(self.state_shardings, sharding.batch_sharding(self.mesh)),
                   out_shardings=(self.state_shardings.params, sharding.replicated(self.mesh)))(state, batch)
