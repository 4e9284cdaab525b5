"""Launching real multi-host JAX jobs on one machine: N processes on localhost, each with its own
simulated CPU devices, joined by jax.distributed (gloo collectives) on a free port."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Callable, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Tests compile far more than they compute: XLA:CPU's backend at -O0 compiles about twice as fast
# and runs the tiny test models fast enough. The same flags in every test process.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_env(devices: int,
                num_processes: int = 1,
                process_id: int = 0,
                port: int | None = None,
                extra: dict | None = None) -> dict:
  """The environment of one process: its CPU device count and, for several processes, its rank."""
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {TEST_XLA_FLAGS}",
             JAX_PLATFORMS="cpu",
             PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""))
  for key in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    env.pop(key, None)
  if num_processes > 1:
    env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
               JAX_NUM_PROCESSES=str(num_processes),
               JAX_PROCESS_ID=str(process_id))
  env.update(extra or {})
  return env


@dataclasses.dataclass
class Job:
  """A running N-process job; `logs[i]` is process i's stdout and stderr."""

  procs: list[subprocess.Popen]
  log_files: list

  def poll(self) -> list[int | None]:
    return [p.poll() for p in self.procs]

  def kill(self, index: int | None = None) -> None:
    """SIGKILL one process (or all)."""
    for i, p in enumerate(self.procs):
      if (index is None or i == index) and p.poll() is None:
        os.kill(p.pid, signal.SIGKILL)
    for i, p in enumerate(self.procs):
      if index is None or i == index:
        p.wait()

  def wait(self, timeout: float) -> list[int]:
    """Return codes; on timeout every process is killed and the codes are -9."""
    deadline = time.time() + timeout
    for p in self.procs:
      try:
        p.wait(max(1.0, deadline - time.time()))
      except subprocess.TimeoutExpired:
        self.kill()
        break
    return [p.returncode for p in self.procs]

  @property
  def logs(self) -> list[str]:
    out = []
    for f in self.log_files:
      f.flush()
      f.seek(0)
      out.append(f.read().decode("utf-8", errors="replace"))
    return out


def start(args: Sequence[str], num_processes: int, devices_per_process: int, extra_env: dict | None = None) -> Job:
  """Starts `python args...` as processes 0..N-1 of one job (a single plain process for N = 1)."""
  port = free_port()
  procs, logs = [], []
  for i in range(num_processes):
    log = tempfile.TemporaryFile()
    env = process_env(devices_per_process, num_processes, i, port, extra_env)
    procs.append(subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
    logs.append(log)
  return Job(procs, logs)


def run(args: Sequence[str],
        num_processes: int,
        devices_per_process: int,
        timeout: float = 600,
        extra_env: dict | None = None) -> Job:
  """Runs a job to the end; raises with every process's log tail if one fails."""
  job = start(args, num_processes, devices_per_process, extra_env)
  codes = job.wait(timeout)
  if any(codes):
    tails = "\n".join(
        f"--- process {i} (exit {c}) ---\n{log[-3000:]}" for i, (c, log) in enumerate(zip(codes, job.logs)))
    raise AssertionError(f"{' '.join(args)} failed:\n{tails}")
  return job


def wait_until(condition: Callable[[], bool], job: Job, timeout: float, poll: float = 0.05) -> bool:
  """Polls `condition` while every process of `job` runs; False if one ended or time ran out."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    if condition():
      return True
    if any(code is not None for code in job.poll()):
      return False
    time.sleep(poll)
  return False
