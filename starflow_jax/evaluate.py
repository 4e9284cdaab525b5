"""Dataset-level exact likelihood: a trained model's NLL over a whole data split, batched and
sharded as training is, with a confidence interval.

The split runs through the training pipeline (`data_pipeline.pipeline.build_dataset`, in source
order, each host reading its rows of every global batch) padded with copies of its last element
to whole global batches; each global batch goes through `Trainer.evaluate` (the compiled
`train.eval_nll`: dequantised pixels -> latents -> x~ = x + sigma eps, every example under its
own condition) and the padding rows are dropped. The figure is the mean over examples of each
example's nats per dimension; its interval is the normal approximation mean +- z * s / sqrt(n)
(examples are independent draws of the split, n in the hundreds or more).
"""

from __future__ import annotations

import dataclasses
import math
import statistics

import jax
import ml_collections
import numpy as np

from data_pipeline import pipeline, sources
from starflow_jax import distributed, experiment, losses, sharding
from starflow_jax.errors import UserError
from starflow_jax.train import Trainer
from starflow_jax.train_loop import model_inputs


class PaddedSource:
  """The first `size` elements of `source`, then copies of the last of them up to `length`."""

  def __init__(self, source, size: int, length: int):
    self.source, self.size, self.length = source, size, length

  def __len__(self) -> int:
    return self.length

  def __getitem__(self, index: int) -> dict:
    return self.source[min(int(index), self.size - 1)]


@dataclasses.dataclass(frozen=True)
class DatasetScore:
  """The NLL of a split: per-example nats/dim, their mean and its confidence interval."""

  split: str
  per_example: np.ndarray  # [n] nats per dimension
  confidence: float
  noise_std: float
  pixel_space: bool  # 8-bit pixels modelled directly: bits/dim are defined

  @property
  def mean(self) -> float:
    return float(np.mean(self.per_example))

  @property
  def stderr(self) -> float:
    n = len(self.per_example)
    return float(np.std(self.per_example, ddof=1) / math.sqrt(n)) if n > 1 else float("nan")

  @property
  def interval(self) -> tuple[float, float]:
    z = statistics.NormalDist().inv_cdf(0.5 + self.confidence / 2)
    return self.mean - z * self.stderr, self.mean + z * self.stderr

  def as_dict(self) -> dict:
    out = {
        "split": self.split,
        "num_examples": len(self.per_example),
        "noise_std": self.noise_std,
        "confidence": self.confidence,
        "nats_per_dim": self.mean,
        "nats_per_dim_stderr": self.stderr,
        "nats_per_dim_interval": list(self.interval)
    }
    if self.pixel_space:
      out["bits_per_dim"] = float(losses.bits_per_dim(self.mean))
      out["bits_per_dim_interval"] = [float(losses.bits_per_dim(v)) for v in self.interval]
    return out


def eval_data(exp: experiment.Experiment, mesh: jax.sharding.Mesh, split: str, num_examples: int | None,
              batch_size: int) -> tuple[pipeline.grain.IterDataset, int]:
  """(this host's batches of the split's first `num_examples` (all: None), their count n)."""
  source = sources.build_source(exp.data, split)
  size = len(source) if num_examples is None else min(num_examples, len(source))
  if size <= 0:
    raise UserError(f"the {split!r} split of data.source={exp.data.source!r} has no examples to score")
  parallel = sharding.data_parallel_size(mesh)
  if batch_size % parallel:
    raise UserError(f"--batch_size={batch_size} must be a multiple of the mesh's data-parallel size {parallel}")
  padded = PaddedSource(source, size, -(-size // batch_size) * batch_size)
  index, count = sharding.process_batch_block(mesh, batch_size)
  options = pipeline.PipelineOptions(batch_size=batch_size // count,
                                     shuffle=False,
                                     shard_index=index,
                                     shard_count=count,
                                     num_epochs=1,
                                     read_threads=exp.data.get("read_threads", 4))
  tokenizer = exp.text.tokenizer if exp.text else None
  transforms = sources.element_transforms(exp.data, tokenizer, training=False)
  return pipeline.build_dataset(padded, options, transforms), size


def dataset_nll(config: ml_collections.ConfigDict,
                mesh: jax.sharding.Mesh,
                model_params,
                text_params=None,
                *,
                split: str = "eval",
                num_examples: int | None = None,
                batch_size: int | None = None,
                seed: int = 0,
                confidence: float = 0.95) -> DatasetScore:
  """Per-example exact NLL of `split` of the config's data under the given parameters."""
  if not 0 < confidence < 1:
    raise UserError(f"confidence={confidence} must be in (0, 1)")
  trainer = Trainer(config, mesh)
  params = {"model": model_params}
  if trainer.text_encoder is not None:
    params["text"] = text_params
  params = jax.device_put(params, trainer.state_shardings.params)
  batch_size = batch_size or trainer.experiment.loop.batch_size
  batches, size = eval_data(trainer.experiment, mesh, split, num_examples, batch_size)
  key = jax.random.PRNGKey(seed)
  values = []
  for step, host_batch in enumerate(batches):
    batch = sharding.global_batch_from_host(model_inputs(host_batch), mesh)
    nll = distributed.gather_to_host(trainer.evaluate(params, batch, jax.random.fold_in(key, step)))
    values.append(np.asarray(nll)[:max(0, size - step * batch_size)])
  return DatasetScore(split=split,
                      per_example=np.concatenate(values),
                      confidence=confidence,
                      noise_std=trainer.settings.noise_std,
                      pixel_space=trainer.experiment.autoencoder.kind == "identity" and
                      not trainer.settings.pre_encoded)
