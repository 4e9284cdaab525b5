"""Exact resume: SIGKILL a training process mid-run, restart the same command, compare losses."""

import os
import signal
import subprocess
import sys
import tempfile
import time

from absl.testing import absltest

from starflow_jax import metrics
from starflow_jax.train_checkpoint import checkpoint_directory

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 40


def _command(workdir):
  return [sys.executable, "-m", "experiments.main",
          "--config=experiments/configs/tiny_video.py:micro", f"--workdir={workdir}",
          "--config.train.drop_first_frame=0.5", f"--config.train.num_steps={STEPS}"]


def _env(compilation_cache: str):
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # one CPU device, as a user's laptop run
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  # JAX's persistent compilation cache, shared by this module's runs: the first run compiles
  # the train step (~30 s of each run's ~40 s here), later runs load it, as a restarted pod job
  # with JAX_COMPILATION_CACHE_DIR set would. Results are the same either way (same program).
  env["JAX_COMPILATION_CACHE_DIR"] = compilation_cache
  return env


def _committed_steps(workdir):
  path = checkpoint_directory(workdir)
  if not os.path.isdir(path):
    return []
  return sorted(int(d) for d in os.listdir(path) if d.isdigit())


class ResumeTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls._cache = tempfile.TemporaryDirectory(prefix="jax_cache_")
    cls.env = _env(cls._cache.name)

  @classmethod
  def tearDownClass(cls):
    cls._cache.cleanup()
    super().tearDownClass()

  def test_sigkill_and_restart_continue_exactly(self):
    tmp = self.create_tempdir().full_path
    straight, killed = os.path.join(tmp, "straight"), os.path.join(tmp, "killed")
    subprocess.run(_command(straight), cwd=REPO, env=self.env, check=True, capture_output=True, timeout=600)

    proc = subprocess.Popen(_command(killed), cwd=REPO, env=self.env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
      logged = [r["step"] for r in metrics.read_metrics(killed)]
      if any(s >= 8 for s in _committed_steps(killed)) and logged and max(logged) >= 9:
        break
      time.sleep(0.05)
    self.assertIsNone(proc.poll(), "the run finished before it could be killed")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    steps_before = max(r["step"] for r in metrics.read_metrics(killed))
    self.assertLess(steps_before, STEPS)

    subprocess.run(_command(killed), cwd=REPO, env=self.env, check=True, capture_output=True, timeout=600)
    a, b = metrics.read_metrics(straight), metrics.read_metrics(killed)
    self.assertEqual([r["step"] for r in a], list(range(1, STEPS + 1)))
    self.assertEqual([r["step"] for r in b], list(range(1, STEPS + 1)))
    for ra, rb in zip(a, b):
      for key in ("loss", "loss_z", "loss_logdet", "denoiser_loss", "grad_norm"):
        self.assertEqual(ra[key], rb[key], f"step {ra['step']} {key}")
    self.assertTrue(os.path.isdir(os.path.join(killed, "model", "params")))

  def test_incompatible_checkpoint_is_refused_and_kept(self):
    tmp = self.create_tempdir().full_path
    workdir = os.path.join(tmp, "run")
    cmd = _command(workdir) + ["--config.train.num_steps=4", "--config.train.warmup_steps=1"]
    subprocess.run(cmd, cwd=REPO, env=self.env, check=True, capture_output=True, timeout=600)
    before = _committed_steps(workdir)
    result = subprocess.run(cmd + ["--config.model.channels=64", "--config.train.num_steps=8"], cwd=REPO,
                            env=self.env, capture_output=True, text=True, timeout=600)
    self.assertNotEqual(result.returncode, 0)
    self.assertIn("different model", result.stderr)
    self.assertEqual(_committed_steps(workdir), before)


if __name__ == "__main__":
  absltest.main()
