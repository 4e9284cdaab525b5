"""The command-line programs: importing them registers no flags (so tests and notebooks can import
any set of them into one process), and each one parses its own flags when run."""

import importlib
import os
import subprocess
import sys

from absl import flags
from absl.testing import absltest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = (
    "data_pipeline.preencode",
    "data_pipeline.prepare_tfds",
    "experiments.bench_data",
    "experiments.bench_sampling",
    "experiments.bench_train",
    "experiments.demo",
    "experiments.eval_denoiser",
    "experiments.eval_samples",
    "experiments.main",
    "experiments.sample",
    "experiments.train_vae",
)


class CommandTest(absltest.TestCase):

  def test_importing_every_command_registers_no_flags(self):
    for name in COMMANDS:
      module = importlib.import_module(name)
      self.assertTrue(callable(getattr(module, "define_flags", None)), f"{name} has no define_flags()")
    registered_by = flags.FLAGS.flags_by_module_dict()
    self.assertEmpty([name for name in COMMANDS if registered_by.get(name)])

  def test_every_command_parses_its_flags(self):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    procs = {name: subprocess.Popen([sys.executable, "-m", name, "--helpshort"], cwd=REPO, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for name in COMMANDS}
    for name, proc in procs.items():
      output, _ = proc.communicate(timeout=300)
      # absl prints the usage and exits with status 1 after --helpshort.
      self.assertNotIn("Traceback", output, f"{name} --helpshort failed:\n{output}")
      self.assertIn(proc.returncode, (0, 1), output)
      self.assertRegex(output, r"\n  --\w+", f"{name} --helpshort lists no flags:\n{output}")


if __name__ == "__main__":
  absltest.main()
