"""Training checkpoints: an orbax CheckpointManager over `workdir/checkpoints`.

Each step directory holds the train state (params, optimizer state, step, rng, counters), the
data iterator's state (grain, one file per host) and the experiment config. Saves are periodic,
keep the newest N, and are asynchronous; orbax commits a step only when it is complete, so a
run killed mid-save leaves the previous checkpoints intact. Every process saves and restores
collectively (its own shards of the state, its own iterator file). Restoring uses the current
mesh's shardings, so a run can resume on a different mesh shape and on a different number of
processes: each host's iterator position is the global step (see data_pipeline.pipeline), so
the saved position carries over. A checkpoint that cannot be restored, or that was written by a
different model, is an error that names the step and the fix; nothing is deleted or overwritten.
"""

from __future__ import annotations

import json

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from starflow_jax import checkpoint as model_checkpoint
from starflow_jax import distributed, fileio
from starflow_jax.config import ModelConfig
from starflow_jax.errors import UserError

CHECKPOINT_DIR = "checkpoints"
DATA_ITEM = "data_iter"


def checkpoint_directory(workdir: fileio.PathLike) -> epath.Path:
  return fileio.as_path(workdir) / CHECKPOINT_DIR


def has_checkpoints(workdir: fileio.PathLike) -> bool:
  """Whether `workdir` holds a committed or partial training checkpoint step (read only)."""
  directory = checkpoint_directory(workdir)
  return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


def _iterator_file(process_index: int, process_count: int) -> str:
  return f"process_{process_index}-of-{process_count}.json"  # grain's CheckpointHandler names


def portable_iterator_state(data_dir: epath.Path) -> dict:
  """The iterator position saved by a run with another process count, for this process.

  Host batch j is the host's rows of global batch j, so a serial pipeline's state
  {'next_index': j} means the same position on every host and for any process count. States of
  worker-process pipelines (data.worker_count > 0) hold grain's per-worker bookkeeping and do
  not carry over."""
  files = sorted(data_dir.glob("process_*-of-*.json")) if data_dir.is_dir() else []
  if not files:
    raise UserError(f"{data_dir} holds no data-iterator state; the checkpoint is damaged. Move "
                    "that step directory away to resume from an earlier one.")
  states = [json.loads(f.read_text()) for f in files]
  if any(set(state) != {"next_index"} for state in states):
    raise UserError(f"the checkpoint in {data_dir.parent} was written by {len(files)} processes "
                    "with grain worker processes (data.worker_count > 0); their iterator state "
                    f"does not carry over to {jax.process_count()} processes. Resume with the "
                    "original process count, or train with data.worker_count=0")
  positions = {int(state["next_index"]) for state in states}
  if len(positions) != 1:
    raise UserError(f"the hosts' data positions in {data_dir} disagree ({sorted(positions)}); "
                    "the checkpoint is damaged")
  return {"next_index": positions.pop()}


class TrainCheckpointer:
  """Saves and restores (state, data iterator, config) by step."""

  def __init__(self, workdir: str, every_steps: int, keep: int, async_save: bool = True):
    self.directory = checkpoint_directory(workdir)
    options = ocp.CheckpointManagerOptions(save_interval_steps=max(1, every_steps),
                                           max_to_keep=keep,
                                           enable_async_checkpointing=async_save,
                                           create=True)
    model_checkpoint.configure_array_writes()
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def resume_step(self) -> int | None:
    """The latest committed step, as every process sees it after all of them have started.

    Each process lists the directory itself; a process that listed before another host's
    previous job had finished, or a workdir that is not one shared directory, would resume from
    another step and pair its collectives with the wrong ones (a hang). So the processes list
    after a barrier and must agree."""
    if jax.process_count() > 1:
      distributed.barrier("list checkpoints")
      self.manager.reload()
    latest = self.manager.latest_step()
    seen = distributed.every_process_value(-1 if latest is None else latest)
    if len(set(seen)) > 1:
      shown = ", ".join(f"process {i}: {'none' if s < 0 else s}" for i, s in enumerate(seen))
      raise UserError(f"the processes see different latest checkpoints in {self.directory} ({shown}); "
                      "every host must read and write the same shared --workdir")
    return latest

  def save(self, step: int, state, iterator, config: ml_collections.ConfigDict, force: bool = False) -> bool:
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data_iter=grain.checkpoint.CheckpointSave(iterator),
                              config=ocp.args.JsonSave(json.loads(config.to_json_best_effort())))
    return self.manager.save(step, args=args, force=force)

  def check_compatible(self, step: int, config: ml_collections.ConfigDict) -> None:
    """Raises if the checkpoint at `step` was written for a different model architecture."""
    saved = self.read_config(step)
    ours = json.loads(config.to_json_best_effort())
    if saved.get("model") != ours.get("model"):
      diff = sorted(k for k in set(saved.get("model", {})) | set(ours["model"])
                    if saved.get("model", {}).get(k) != ours["model"].get(k))
      raise UserError(f"the checkpoint at step {step} in {self.directory} was written for a different model "
                      f"(fields {diff} differ). Use a new --workdir for a new architecture, or restore the "
                      "original config; the existing checkpoints are left untouched.")

  def read_config(self, step: int) -> dict:
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    except Exception as e:
      raise UserError(f"cannot read the config of checkpoint step {step} in {self.directory} "
                      f"({type(e).__name__}: {e}); the checkpoint is damaged. Move that step "
                      "directory away to resume from an earlier one.") from e
    return restored["config"]

  def restore(self, step: int, abstract_state, iterator):
    """The train state at `step` (with the shardings in `abstract_state`); moves `iterator`.

    A checkpoint written by another number of processes restores too (resharded state, the
    data position carried over)."""
    data_dir = self.directory / str(step) / DATA_ITEM
    same_processes = (data_dir / _iterator_file(jax.process_index(), jax.process_count())).exists()
    args = {"state": ocp.args.StandardRestore(abstract_state)}
    if same_processes:
      args["data_iter"] = grain.checkpoint.CheckpointRestore(iterator)
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(**args))
      if not same_processes:
        iterator.set_state(portable_iterator_state(data_dir))
    except UserError:
      raise
    except Exception as e:
      raise UserError(f"cannot restore checkpoint step {step} from {self.directory} ({type(e).__name__}: {e}). "
                      "It is damaged or does not match this config. Nothing was overwritten: move the step "
                      "directory away to resume from an earlier checkpoint, or use a new --workdir.") from e
    return restored["state"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def export_model(workdir: fileio.PathLike,
                 params,
                 model_config: ModelConfig,
                 text_config=None,
                 autoencoder_config=None,
                 sampling_defaults: dict | None = None,
                 name: str = "model",
                 null_condition=None) -> str:
  """Writes trained parameters {'model', 'text'} as a model directory (what the sampler and
  converter read). Collective in a multi-host run: the parameters stay sharded as trained and
  each process writes its own shards."""
  return model_checkpoint.save_model(fileio.as_path(workdir) / name,
                                     model_config,
                                     params["model"],
                                     overwrite=True,
                                     text_config=text_config,
                                     text_params=params.get("text"),
                                     autoencoder_config=autoencoder_config,
                                     sampling_defaults=sampling_defaults,
                                     null_condition=null_condition)
