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
from starflow_jax.train import Trainer, TrainState, drop_first_frame_now
from starflow_jax.train_checkpoint import TrainCheckpointer, export_model, has_checkpoints

MODEL_INPUT_KEYS = ("video", "tokens", "label", "text_embeddings")
log = logging.getLogger(__name__)


def _write_config(workdir, config: ml_collections.ConfigDict) -> None:
  if distributed.is_primary():
    fileio.write_text(fileio.as_path(workdir) / "config.json", config.to_json_best_effort(indent=1))


def build_train_data(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, text_config=None):
  """The training pipeline of this host: its rows of every global batch on `mesh`."""
  source = sources.build_source(config.data, "train")
  index, count = sharding.process_batch_block(mesh, config.train.batch_size)
  options = pipeline.PipelineOptions(
      batch_size=config.train.batch_size // count, seed=config.seed, shard_index=index,
      shard_count=count, worker_count=config.data.get("worker_count", 0),
      read_threads=config.data.get("read_threads", 4),
      prefetch_buffer_size=config.data.get("prefetch_buffer_size", 8))
  tokenizer = text_config.tokenizer if text_config else None
  return pipeline.build_dataset(source, options, sources.element_transforms(config.data, tokenizer))


class _Sampler:
  """Periodic samples from the current parameters (the VideoSampler is built once)."""

  def __init__(self, config: ml_collections.ConfigDict, trainer: Trainer, workdir):
    self.config, self.trainer, self.workdir = config, trainer, workdir
    self.sampler = None
    self.prompts = list(config.log.get("sample_prompts", ()))
    if not self.prompts and trainer.model_config.conditioning == "text":
      eval_source = sources.build_source(config.data, "eval")
      self.prompts = [str(eval_source[i].get("caption", "")) for i in range(config.log.num_samples)]
    elif not self.prompts and trainer.model_config.conditioning == "class":
      self.prompts = [str(i % trainer.model_config.num_classes) for i in range(config.log.num_samples)]

  def __call__(self, step: int, state: TrainState, writer: metrics_lib.MetricWriter) -> str | None:
    """Samples (collectively); process 0 writes the grid and returns its path, the others None."""
    params = self.trainer.final_params(state)  # the EMA when there is one: what is exported
    exp = self.trainer.experiment
    if self.sampler is None:
      bundle = model_checkpoint.ModelBundle(
          self.trainer.model_config, params["model"], self.trainer.text_config, params.get("text"),
          exp.autoencoder, null_condition=self.trainer.null_condition)
      self.sampler = sampling.VideoSampler(bundle, exp.sampling, mesh=self.trainer.mesh)
    self.sampler.set_params(params["model"], params.get("text"))
    frames = exp.example_shape[0]
    prompts = self.prompts or None
    videos = self.sampler.generate(prompts, frames, seed=self.config.seed, batch_size=self.config.log.num_samples)
    videos = distributed.gather_to_host(videos)  # collective
    if videos.ndim == 4:
      videos = videos[:, None]
    if not distributed.is_primary():
      return None
    path = media.save_grid_png(fileio.as_path(self.workdir) / "samples" / f"step_{step:07d}.png",
                               videos, self.prompts)
    writer.write_images(step, {"samples": media.frame_grid(videos, self.prompts)})
    return path


def sampling_defaults(config: ml_collections.ConfigDict) -> dict:
  """What the sampler should know about training: stored in the exported model directory."""
  return experiment.Experiment.from_config(config).sampling_defaults()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains `config` in `workdir` (resuming from its latest checkpoint if there is one).

  In a multi-host run every process calls this with the same arguments."""
  distributed.initialize(config.mesh.get("multihost", False))
  workdir = fileio.as_path(workdir)
  if workdir.exists() and not workdir.is_dir():
    raise UserError(f"--workdir {workdir} is a file; give a directory (new, or an earlier run's to resume)")
  exp = experiment.validate_experiment(config)  # the config as typed parts, once
  mesh = sharding.make_mesh(tuple(config.mesh.shape))
  log.info("mesh %s over %d devices (%s)", dict(mesh.shape), mesh.size, jax.devices()[0].platform)
  trainer = Trainer(config, mesh, exp)
  init_bundle = None  # parameters to start from, read (and checked) before anything is written
  if config.train.get("init_from", "") and not has_checkpoints(workdir):
    init_bundle = model_checkpoint.load_bundle(config.train.init_from)
    if init_bundle.config != trainer.model_config:
      raise UserError(f"config.train.init_from={config.train.init_from} holds a different model "
                      "architecture than config.model; make them agree")
  _write_config(workdir, config)
  dataset = build_train_data(config, mesh, trainer.text_config)
  iterator = iter(dataset)
  ckpt = TrainCheckpointer(workdir, config.checkpoint.every_steps, config.checkpoint.keep,
                           config.checkpoint.get("async_save", True))
  latest = ckpt.latest_step()
  if latest is not None:
    ckpt.check_compatible(latest, config)
    state = ckpt.restore(latest, trainer.abstract_state, iterator)
    log.info("resumed from step %d in %s", latest, ckpt.directory)
  else:
    state = trainer.init_state(config.seed)
    if init_bundle is not None:
      state = trainer.state_with_params(state, init_bundle.params)
      log.info("initialised the model from %s", config.train.init_from)
  writer = metrics_lib.MetricWriter(workdir)
  sampler = _Sampler(config, trainer, workdir) if config.log.sample_every_steps else None
  num_steps = config.train.num_steps
  start_step = int(jax.device_get(state.step))
  log_every = max(1, config.log.every_steps)
  bar = tqdm.tqdm(total=num_steps, initial=start_step, desc="train", unit="step",
                  disable=not config.log.get("progress", True) or jax.process_index() != 0)
  last_time, last_step = time.time(), start_step
  tokens_per_step = trainer.experiment.tokens_per_step()
  for step in range(start_step, num_steps):
    host_batch = next(iterator)
    batch = sharding.global_batch_from_host(
        {k: v for k, v in host_batch.items() if k in MODEL_INPUT_KEYS}, mesh)
    with jax.transfer_guard("disallow"):
      state, step_metrics = trainer.step(state, batch, drop_first_frame_now(config, step))
    done = step + 1
    if done % log_every == 0 or done == num_steps:
      values = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
      now = time.time()
      values["steps_per_sec"] = (done - last_step) / max(now - last_time, 1e-9)
      values["tokens_per_sec"] = values["steps_per_sec"] * tokens_per_step
      last_time, last_step = now, done
      writer.write_scalars(done, values)
      shown = {k: f"{values[k]:.4g}" for k in ("loss", "bpd", "denoiser_loss", "steps_per_sec") if k in values}
      bar.set_postfix(shown, refresh=False)
    ckpt.save(done, state, iterator, config)
    if sampler is not None and (done % config.log.sample_every_steps == 0 or done == num_steps):
      path = sampler(done, state, writer)
      if path:
        log.info("samples at step %d: %s", done, path)
    bar.update(1)
  bar.close()
  if ckpt.latest_step() != num_steps:
    ckpt.save(num_steps, state, iterator, config, force=True)
  ckpt.close()
  writer.close()
  model_dir = export_model(workdir, trainer.final_params(state), trainer.model_config,  # collective
                           trainer.text_config,
                           exp.autoencoder, exp.sampling_defaults(),
                           null_condition=trainer.null_condition)
  if distributed.is_primary():
    curve = metrics_lib.plot_loss_curve(workdir)
    log.info("model exported to %s; loss curve %s", model_dir, curve)
  return state
