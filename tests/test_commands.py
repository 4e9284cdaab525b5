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

# Runs `python -m NAME --helpshort` for each NAME in argv as a fork of this process; prints
# {"threads": threads alive at the forks, "commands": {NAME: {"code", "output"}}} as JSON.
HELP_FORKS = """
import json, os, runpy, sys, tempfile, threading
import flax, jax, numpy, optax, orbax.checkpoint
import experiments.cli
threads, commands = threading.active_count(), {}
for name in sys.argv[1:]:
  out = tempfile.TemporaryFile()
  pid = os.fork()
  if pid == 0:
    os.dup2(out.fileno(), 1)
    os.dup2(out.fileno(), 2)
    sys.argv, code = [name, "--helpshort"], 0
    try:
      runpy.run_module(name, run_name="__main__", alter_sys=True)
    except SystemExit as e:
      code = e.code if isinstance(e.code, int) else 1
    except BaseException:
      import traceback
      traceback.print_exc()
      code = 3
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
  _, status = os.waitpid(pid, 0)
  out.seek(0)
  commands[name] = {"code": os.waitstatus_to_exitcode(status), "output": out.read().decode()}
print(json.dumps({"threads": threads, "commands": commands}))
"""


class CommandTest(absltest.TestCase):

  def _run_python(self, script: str, *args: str):
    """Runs `python -c script args` in the repository; its last line of output, as JSON."""
    proc = subprocess.run([sys.executable, "-c", script, *args],
                          cwd=REPO,
                          capture_output=True,
                          text=True,
                          timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    self.assertEqual(proc.returncode, 0, proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])

  def test_importing_every_command_registers_no_flags(self):
    # In a fresh process: a test in this one may have called a command's define_flags().
    script = (
        "import importlib, json; from absl import flags\n"
        f"names = {list(COMMANDS)!r}\n"
        "modules = [importlib.import_module(n) for n in names]\n"
        "print(json.dumps({'missing': [n for n, m in zip(names, modules) if not callable(getattr(m, 'define_flags', None))],"
        " 'registered': [n for n in names if flags.FLAGS.flags_by_module_dict().get(n)]}))")
    self.assertEqual(self._run_python(script), {"missing": [], "registered": []})

  def test_every_command_parses_its_flags(self):
    # `python -m NAME --helpshort` for every command, as forks of one process that has imported
    # what they all import (jax, flax, orbax: 20 fresh interpreters cost ~1 CPU-minute). It
    # forks before any JAX backend (or other thread) exists, and each child runs the module as
    # `-m` does, with its own flags.
    result = self._run_python(HELP_FORKS, *COMMANDS)
    self.assertEqual(result["threads"], 1, "the parent must fork single-threaded")
    self.assertEqual(sorted(result["commands"]), sorted(COMMANDS))
    for name, run in result["commands"].items():
      output = run["output"]
      # absl prints the usage and exits with status 1 after --helpshort.
      self.assertNotIn("Traceback", output, f"{name} --helpshort failed:\n{output}")
      self.assertIn(run["code"], (0, 1), output)
      self.assertRegex(output, r"\n  --\w+", f"{name} --helpshort lists no flags:\n{output}")


if __name__ == "__main__":
  absltest.main()
