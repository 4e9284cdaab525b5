"""`train_and_evaluate(config, workdir)`: the training loop around `train.Trainer`.

Per step: next batch from the grain pipeline (this host's shard), assembled into global arrays
over the mesh, one compiled train step. Every `log.every_steps`: metrics to TensorBoard,
`metrics.jsonl` and the progress bar. Every `checkpoint.every_steps`: an orbax checkpoint of the
state and the data iterator. Every `log.sample_every_steps`: sample clips from the current model
into `workdir/samples/`. At the end: a final checkpoint, the model exported as `workdir/model`
(a model directory for the sampler and the converter) and `workdir/loss_curve.png`.
A run restarted with the same command resumes from its latest checkpoint exactly.
Multi-host: every process runs this same function (`config.mesh.multihost`); each reads its own
rows of every global batch, checkpoints and the export are collective, and files meant to exist
once (config, metrics, TensorBoard, sample grids, the loss curve) are written by process 0.
"""

from __future__ import annotations

import logging
import time

import jax
import ml_collections
import tqdm

from data_pipeline import pipeline, sources
from starflow_jax import checkpoint as model_checkpoint
from starflow_jax import distributed, experiment, fileio, media, metrics as metrics_lib, sampling, sharding
from starflow_jax.errors import UserError
from starflow_jax.train import Trainer, TrainState
from starflow_jax.train_checkpoint import TrainCheckpointer, export_model, has_checkpoints

MODEL_INPUT_KEYS = ("video", "tokens", "label", "text_embeddings", "actions")
log = logging.getLogger(__name__)


def model_inputs(host_batch: dict) -> dict:
  """What a train step reads of a host batch (the source's metadata stays behind)."""
  return {k: v for k, v in host_batch.items() if k in MODEL_INPUT_KEYS}


def _write_config(workdir, config: ml_collections.ConfigDict) -> None:
  if distributed.is_primary():
    fileio.write_text(fileio.as_path(workdir) / "config.json", config.to_json_best_effort(indent=1))


def build_train_data(exp: experiment.Experiment, mesh: jax.sharding.Mesh):
  """The training pipeline of this host: its rows of every global batch on `mesh`."""
  data, loop = exp.data, exp.loop
  source = sources.build_source(data, "train")
  index, count = sharding.process_batch_block(mesh, loop.batch_size)
  options = pipeline.PipelineOptions(batch_size=loop.batch_size // count,
                                     seed=loop.seed,
                                     shard_index=index,
                                     shard_count=count,
                                     worker_count=data.get("worker_count", 0),
                                     read_threads=data.get("read_threads", 4),
                                     prefetch_buffer_size=data.get("prefetch_buffer_size", 8))
  tokenizer = exp.text.tokenizer if exp.text else None
  return pipeline.build_dataset(source, options, sources.element_transforms(data, tokenizer))


class _Sampler:
  """Periodic samples from the current parameters (the VideoSampler is built once)."""

  def __init__(self, trainer: Trainer, workdir):
    self.trainer, self.workdir = trainer, workdir
    self.loop = loop = trainer.experiment.loop
    self.sampler = None
    self.prompts = list(loop.sample_prompts)
    if not self.prompts and trainer.model_config.conditioning == "text":
      eval_source = sources.build_source(trainer.experiment.data, "eval")
      self.prompts = [str(eval_source[i].get("caption", "")) for i in range(loop.num_samples)]
    elif not self.prompts and trainer.model_config.conditioning == "class":
      self.prompts = [str(i % trainer.model_config.num_classes) for i in range(loop.num_samples)]

  def __call__(self, step: int, state: TrainState, writer: metrics_lib.MetricWriter) -> str | None:
    """Samples (collectively); process 0 writes the grid and returns its path, the others None."""
    params = self.trainer.final_params(state)  # the EMA when there is one: what is exported
    exp = self.trainer.experiment
    if self.sampler is None:
      bundle = model_checkpoint.ModelBundle(self.trainer.model_config,
                                            params["model"],
                                            self.trainer.text_config,
                                            params.get("text"),
                                            exp.autoencoder,
                                            null_condition=self.trainer.null_condition)
      self.sampler = sampling.VideoSampler(bundle, exp.sampling, mesh=self.trainer.mesh)
    self.sampler.set_params(params["model"], params.get("text"))
    frames = exp.example_shape[0]
    prompts = self.prompts or None
    videos = self.sampler.generate(prompts, frames, seed=self.loop.seed, batch_size=self.loop.num_samples)
    videos = distributed.gather_to_host(videos)  # collective
    if videos.ndim == 4:
      videos = videos[:, None]
    if not distributed.is_primary():
      return None
    path = media.save_grid_png(fileio.as_path(self.workdir) / "samples" / f"step_{step:07d}.png", videos, self.prompts)
    writer.write_images(step, {"samples": media.frame_grid(videos, self.prompts)})
    return path


def sampling_defaults(config: ml_collections.ConfigDict) -> dict:
  """What the sampler should know about training: stored in the exported model directory."""
  return experiment.Experiment.from_config(config).sampling_defaults()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains `config` in `workdir` (resuming from its latest checkpoint if there is one).

  In a multi-host run every process calls this with the same arguments."""
  distributed.initialize(config.mesh.get("multihost", False))  # before any backend exists
  workdir = fileio.as_path(workdir)
  if workdir.exists() and not workdir.is_dir():
    raise UserError(f"--workdir {workdir} is a file; give a directory (new, or an earlier run's to resume)")
  exp = experiment.validate_experiment(config)  # the config as typed parts, once
  mesh = exp.mesh.make()
  log.info("mesh %s over %d devices (%s)", dict(mesh.shape), mesh.size, jax.devices()[0].platform)
  trainer = Trainer(config, mesh, exp)
  init_bundle = _init_bundle(exp, trainer, workdir)  # read (and checked) before anything is written
  _write_config(workdir, config)
  iterator = iter(build_train_data(exp, mesh))
  ckpt = TrainCheckpointer(workdir, exp.loop.checkpoint_every, exp.loop.checkpoint_keep, exp.loop.async_checkpoints)
  state = _start_state(ckpt, trainer, iterator, config, init_bundle)
  writer = metrics_lib.MetricWriter(workdir)
  state = _train_steps(exp, trainer, state, iterator, ckpt, writer, workdir)
  if ckpt.latest_step() != exp.loop.num_steps:
    ckpt.save(exp.loop.num_steps, state, iterator, config, force=True)
  ckpt.close()
  writer.close()
  model_dir = export_model(
      workdir,
      trainer.final_params(state),
      trainer.model_config,  # collective
      trainer.text_config,
      exp.autoencoder,
      exp.sampling_defaults(),
      null_condition=trainer.null_condition)
  if distributed.is_primary():
    curve = metrics_lib.plot_loss_curve(workdir)
    log.info("model exported to %s; loss curve %s", model_dir, curve)
  return state


def _init_bundle(exp: experiment.Experiment, trainer: Trainer, workdir):
  """The model directory `train.init_from` names (for a run without checkpoints yet), or None."""
  if not exp.loop.init_from or has_checkpoints(workdir):
    return None
  bundle = model_checkpoint.load_bundle(exp.loop.init_from)
  if bundle.config != trainer.model_config:
    raise UserError(f"config.train.init_from={exp.loop.init_from} holds a different model "
                    "architecture than config.model; make them agree")
  return bundle


def _start_state(ckpt: TrainCheckpointer, trainer: Trainer, iterator, config, init_bundle) -> TrainState:
  """The latest checkpoint's state (the iterator moved to its position), else a fresh one."""
  latest = ckpt.resume_step()
  if latest is not None:
    ckpt.check_compatible(latest, config)
    state = ckpt.restore(latest, trainer.abstract_state, iterator)
    log.info("resumed from step %d in %s", latest, ckpt.directory)
    return state
  state = trainer.init_state(trainer.experiment.loop.seed)
  if init_bundle is not None:
    state = trainer.state_with_params(state, init_bundle.params)
    log.info("initialised the model from %s", trainer.experiment.loop.init_from)
  return state


def _train_steps(exp: experiment.Experiment, trainer: Trainer, state: TrainState, iterator, ckpt: TrainCheckpointer,
                 writer: metrics_lib.MetricWriter, workdir) -> TrainState:
  """Steps from the state's step to num_steps: logging, checkpoints and samples on schedule."""
  loop, mesh = exp.loop, trainer.mesh
  sampler = _Sampler(trainer, workdir) if loop.sample_every else None
  start_step = int(jax.device_get(state.step))
  bar = tqdm.tqdm(total=loop.num_steps,
                  initial=start_step,
                  desc="train",
                  unit="step",
                  disable=not loop.progress or jax.process_index() != 0)
  throughput = _Throughput(start_step, exp.tokens_per_step())
  for step in range(start_step, loop.num_steps):
    host_batch = next(iterator)
    batch = sharding.global_batch_from_host(model_inputs(host_batch), mesh)
    with jax.transfer_guard("disallow"):
      state, step_metrics = trainer.step(state, batch, exp.drop_first_frame_at(step))
    done = step + 1
    if done % loop.log_every == 0 or done == loop.num_steps:
      values = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
      values.update(throughput(done))
      writer.write_scalars(done, values)
      shown = {k: f"{values[k]:.4g}" for k in ("loss", "bpd", "denoiser_loss", "steps_per_sec") if k in values}
      bar.set_postfix(shown, refresh=False)
    ckpt.save(done, state, iterator, exp.config)
    if sampler is not None and (done % loop.sample_every == 0 or done == loop.num_steps):
      path = sampler(done, state, writer)
      if path:
        log.info("samples at step %d: %s", done, path)
    bar.update(1)
  bar.close()
  return state


class _Throughput:
  """Steps and latent tokens per second since the last call."""

  def __init__(self, step: int, tokens_per_step: int):
    self.last_time, self.last_step, self.tokens_per_step = time.time(), step, tokens_per_step

  def __call__(self, step: int) -> dict[str, float]:
    now = time.time()
    steps_per_sec = (step - self.last_step) / max(now - self.last_time, 1e-9)
    self.last_time, self.last_step = now, step
    return {"steps_per_sec": steps_per_sec, "tokens_per_sec": steps_per_sec * self.tokens_per_step}
