"""The command-line programs: importing them registers no flags (so tests and notebooks can import
any set of them into one process), and each one parses its own flags when run."""

import json
import os
import subprocess
import sys

from absl.testing import absltest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = (
    "data_pipeline.preencode",
    "data_pipeline.prepare_tfds",
    "experiments.bench_data",
    "experiments.bench_memory",
    "experiments.bench_parity",
    "experiments.bench_sampling",
    "experiments.bench_stream",
    "experiments.bench_train",
    "experiments.bench_wan_vae",
    "experiments.demo",
    "experiments.eval_anomaly",
    "experiments.eval_denoiser",
    "experiments.eval_long_video",
    "experiments.eval_samples",
    "experiments.eval_world_model",
    "experiments.main",
    "experiments.rollout",
    "experiments.sample",
    "experiments.score",
    "experiments.train_vae",
)


class CommandTest(absltest.TestCase):

  def test_importing_every_command_registers_no_flags(self):
    # In a fresh process: a test in this one may have called a command's define_flags().
    script = (
        "import importlib, json; from absl import flags\n"
        f"names = {list(COMMANDS)!r}\n"
        "modules = [importlib.import_module(n) for n in names]\n"
        "print(json.dumps({'missing': [n for n, m in zip(names, modules) if not callable(getattr(m, 'define_flags', None))],"
        " 'registered': [n for n in names if flags.FLAGS.flags_by_module_dict().get(n)]}))")
    proc = subprocess.run([sys.executable, "-c", script],
                          cwd=REPO,
                          capture_output=True,
                          text=True,
                          timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    self.assertEqual(proc.returncode, 0, proc.stderr)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    self.assertEqual(result, {"missing": [], "registered": []})

  def test_every_command_parses_its_flags(self):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    procs = {
        name:
            subprocess.Popen([sys.executable, "-m", name, "--helpshort"],
                             cwd=REPO,
                             env=env,
                             stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT,
                             text=True) for name in COMMANDS
    }
    for name, proc in procs.items():
      output, _ = proc.communicate(timeout=300)
      # absl prints the usage and exits with status 1 after --helpshort.
      self.assertNotIn("Traceback", output, f"{name} --helpshort failed:\n{output}")
      self.assertIn(proc.returncode, (0, 1), output)
      self.assertRegex(output, r"\n  --\w+", f"{name} --helpshort lists no flags:\n{output}")


if __name__ == "__main__":
  absltest.main()
