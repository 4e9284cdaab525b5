"""Metrics for people and machines: TensorBoard event files, a JSONL log, and a loss-curve PNG.

`MetricWriter` mirrors clu's metric-writer interface (write_scalars / write_images / flush /
close). It writes TensorBoard events with tensorboardX (clu's writers import TensorFlow, which
this project keeps out of its install) and appends every scalar record to `metrics.jsonl`, the
source of the loss-curve plot and of the exact-resume test. Only the main process writes.
"""

from __future__ import annotations

import json
import os
from typing import Mapping

import jax
import numpy as np

METRICS_FILE = "metrics.jsonl"


class MetricWriter:
  def __init__(self, workdir: str, tensorboard: bool = True):
    self.workdir = workdir
    self.active = jax.process_index() == 0
    self._tb = None
    if self.active:
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(os.path.join(workdir, METRICS_FILE), "a")
      if tensorboard:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.active:
      return
    record = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()  # a killed run keeps every logged step
    if self._tb is not None:
      for key, value in scalars.items():
        self._tb.add_scalar(key, float(value), int(step))

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    """images: uint8 [H, W, 3]."""
    if self.active and self._tb is not None:
      for key, image in images.items():
        self._tb.add_image(key, np.asarray(image), int(step), dataformats="HWC")

  def flush(self) -> None:
    if self.active:
      self._jsonl.flush()
      if self._tb is not None:
        self._tb.flush()

  def close(self) -> None:
    if self.active:
      self.flush()
      self._jsonl.close()
      if self._tb is not None:
        self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
  """Records of metrics.jsonl; a step logged twice (after a resume) keeps its last record."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  by_step = {}
  with open(path) as f:
    for line in f:
      line = line.strip()
      if line:
        try:
          record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill
          continue
        by_step[record["step"]] = record
  return [by_step[s] for s in sorted(by_step)]


def plot_loss_curve(workdir: str, path: str | None = None, keys=("loss", "bpd", "denoiser_loss")) -> str | None:
  """Saves a PNG of the logged training curves; returns its path (None if nothing was logged)."""
  records = read_metrics(workdir)
  keys = [k for k in keys if any(k in r for r in records)]
  if not keys:
    return None
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.2), squeeze=False)
  for ax, key in zip(axes[0], keys):
    steps = [r["step"] for r in records if key in r]
    values = [r[key] for r in records if key in r]
    ax.plot(steps, values, lw=1)
    ax.set_title(key)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
  fig.tight_layout()
  path = path or os.path.join(workdir, "loss_curve.png")
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
