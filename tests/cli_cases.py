"""Runs a command's main function on many argument lists in one process (see tests/test_errors.py):

  python -m tests.cli_cases MODULE CASES.json OUT.json

CASES.json: [[arg, ...], ...]. OUT.json: per case {"argv", "status", "stderr"}; status is the
exit status, or "traceback" when an exception escaped the command's own error handling.
"""

import contextlib
import importlib
import io
import json
import sys
import traceback

from absl import flags

from experiments import cli


def run_case(module, name: str, argv: list[str]) -> dict:
  stderr = io.StringIO()
  status = 0
  with contextlib.redirect_stderr(stderr):
    try:
      if hasattr(module, "define_flags"):  # an absl command
        flags.FLAGS.unparse_flags()
        sys.argv = [name] + argv
        cli.run(module.main)
      else:  # argparse (starflow_jax.interop.convert)
        status = module.main(argv)
    except SystemExit as e:
      status = e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001 - what the test must not see
      traceback.print_exc()
      status = "traceback"
  return {"argv": argv, "status": status, "stderr": stderr.getvalue()}


def main(name: str, cases_path: str, out_path: str) -> None:
  module = importlib.import_module(name)
  if hasattr(module, "define_flags"):
    module.define_flags()
  with open(cases_path) as f:
    cases = json.load(f)
  results = [run_case(module, name, argv) for argv in cases]
  with open(out_path, "w") as f:
    json.dump(results, f, indent=1)


if __name__ == "__main__":
  main(*sys.argv[1:])
