"""The tree is formatted as setup.cfg's [yapf] section says (`make format` applies it)."""

import os
import subprocess

from absl.testing import absltest
from yapf.yapflib import yapf_api

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python_files() -> list[str]:
  """The repository's tracked Python files (or, outside a git checkout, every .py in the tree)."""
  try:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"],
                            cwd=REPO,
                            capture_output=True,
                            text=True,
                            check=True)
    return [os.path.join(REPO, name) for name in listed.stdout.split()]
  except (OSError, subprocess.CalledProcessError):
    return [
        os.path.join(root, name) for root, dirs, files in os.walk(REPO)
        if not any(part.startswith(".") for part in os.path.relpath(root, REPO).split(os.sep)) for name in files
        if name.endswith(".py")
    ]


class FormatTest(absltest.TestCase):

  def test_every_file_is_formatted(self):
    style = os.path.join(REPO, "setup.cfg")
    unformatted = []
    for path in python_files():
      _, _, changed = yapf_api.FormatFile(path, style_config=style, print_diff=False)  # (code, encoding, changed)
      if changed:
        unformatted.append(os.path.relpath(path, REPO))
    self.assertEqual(unformatted, [], "run `make format`")

  def test_the_check_sees_a_misformatted_file(self):
    code = "def f( a,b ):\n    return a+b\n"
    formatted, changed = yapf_api.FormatCode(code, style_config=os.path.join(REPO, "setup.cfg"))
    self.assertTrue(changed)
    self.assertEqual(formatted, "def f(a, b):\n  return a + b\n")


if __name__ == "__main__":
  absltest.main()
