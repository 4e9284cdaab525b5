"""Metrics for people and machines: TensorBoard event files, a JSONL log, and a loss-curve PNG.

`MetricWriter` mirrors clu's metric-writer interface (write_scalars / write_images / flush /
close). It writes TensorBoard events with tensorboardX (clu's writers import TensorFlow, which
this project keeps out of its install) and appends every scalar record to `metrics.jsonl`, the
source of the loss-curve plot and of the exact-resume test. Only the main process writes.
The workdir may be local or `gs://...`: a local metrics.jsonl is appended to and flushed per
record; a remote one (objects cannot be appended to) is rewritten whole, earlier lines kept.
"""

from __future__ import annotations

import json
import os
from typing import Mapping

import numpy as np

from starflow_jax import distributed, fileio

METRICS_FILE = "metrics.jsonl"


class _JsonLines:
  """Appends lines to a file and makes each durable at once (a killed run keeps them)."""

  def __init__(self, path):
    self.path = fileio.as_path(path)
    self.remote = fileio.is_url(self.path)
    if self.remote:
      self.lines = self.path.read_text().splitlines(keepends=True) if self.path.exists() else []
    else:
      self.path.parent.mkdir(parents=True, exist_ok=True)
      self.file = open(os.fspath(self.path), "a")

  def append(self, line: str) -> None:
    if self.remote:
      self.lines.append(line)
      fileio.write_text(self.path, "".join(self.lines))
    else:
      self.file.write(line)
      self.file.flush()

  def close(self) -> None:
    if not self.remote:
      self.file.close()


class MetricWriter:

  def __init__(self, workdir, tensorboard: bool = True):
    self.workdir = fileio.as_path(workdir)
    self.active = distributed.is_primary()
    self._tb = None
    if self.active:
      self._jsonl = _JsonLines(self.workdir / METRICS_FILE)
      if tensorboard:
        from tensorboardX import SummaryWriter  # heavy (protobuf): only where TensorBoard is written
        self._tb = SummaryWriter(os.fspath(self.workdir / "tensorboard"))

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.active:
      return
    record = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
    self._jsonl.append(json.dumps(record) + "\n")
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
      if self._tb is not None:
        self._tb.flush()

  def close(self) -> None:
    if self.active:
      self.flush()
      self._jsonl.close()
      if self._tb is not None:
        self._tb.close()


def read_metrics(workdir) -> list[dict]:
  """Records of metrics.jsonl; a step logged twice (after a resume) keeps its last record."""
  path = fileio.as_path(workdir) / METRICS_FILE
  if not path.exists():
    return []
  by_step = {}
  for line in path.read_text().splitlines():
    line = line.strip()
    if line:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:  # a line cut by a kill
        continue
      by_step[record["step"]] = record
  return [by_step[s] for s in sorted(by_step)]


def plot_loss_curve(workdir, path=None, keys=("loss", "bpd", "denoiser_loss")) -> str | None:
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
  path = fileio.as_path(path or fileio.as_path(workdir) / "loss_curve.png")
  fileio.write_file(path, lambda local: fig.savefig(local, dpi=110, format="png"), suffix=".png")
  plt.close(fig)
  return os.fspath(path)
