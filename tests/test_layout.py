"""The package's shape: no import cycle among the library's modules, the parameter tree's
top-level keys spelled only by the model, and library functions short enough to read at once."""

import ast
import os
import re

from absl.testing import absltest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("starflow_jax", "data_pipeline")
MAX_FUNCTION_LINES = 60  # body lines, docstring excluded


def library_modules() -> dict[str, str]:
  """{dotted module name: path} of every module in the library packages."""
  modules = {}
  for package in PACKAGES:
    for root, _, files in os.walk(os.path.join(REPO, package)):
      for name in files:
        if name.endswith(".py"):
          path = os.path.join(root, name)
          dotted = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
          modules[dotted.removesuffix(".__init__")] = path
  return modules


def module_level_imports(path: str, modules: dict[str, str]) -> set[str]:
  """Library modules imported at module level (function-local imports do not form cycles at
  import time, and are kept for optional dependencies)."""
  tree = ast.parse(open(path).read())
  found = set()
  for node in tree.body:
    names = []
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    for name in names:
      while name and name not in modules:
        name = name.rpartition(".")[0]
      if name:
        found.add(name)
  return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == "open":
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        cycle = visit(nxt)
        if cycle:
          return cycle
    state[node] = "done"
    stack.pop()
    return None

  for node in sorted(graph):
    if node not in state:
      cycle = visit(node)
      if cycle:
        return cycle
  return None


class LayoutTest(absltest.TestCase):

  def test_no_import_cycle(self):
    modules = library_modules()
    graph = {}
    for name, path in modules.items():
      parents = {name.rsplit(".", i)[0] for i in range(1, name.count(".") + 1)}  # its packages
      graph[name] = module_level_imports(path, modules) - {name} - parents
    self.assertIsNone(find_cycle(graph))

  def test_the_cycle_finder_finds_cycles(self):
    self.assertEqual(find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}), ["a", "b", "c", "a"])
    self.assertIsNone(find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}))

  def test_only_the_model_spells_the_parameter_keys(self):
    keys = re.compile(r"""["']deep_block["']|\[["']denoiser["']\]|["']denoiser["']\s+in\b|shallow_block_(\{|\d)""")
    offenders = []
    for name, path in library_modules().items():
      if name != "starflow_jax.model":
        offenders += [f"{name}: {m.group(0)}" for m in keys.finditer(open(path).read())]
    self.assertEqual(offenders, [])

  def test_library_functions_are_short(self):
    long_functions = []
    for name, path in library_modules().items():
      for fn, length in function_lengths(path):
        if length > MAX_FUNCTION_LINES:
          long_functions.append(f"{name}.{fn}: {length} lines")
    self.assertEqual(long_functions, [])

  def test_function_lengths_leave_out_the_docstring(self):
    path = os.path.join(self.create_tempdir().full_path, "m.py")
    with open(path, "w") as f:
      f.write('def f():\n  """One.\n\n  Two."""\n  x = 1\n  return x\n')
    self.assertEqual(function_lengths(path), [("f", 3)])


def function_lengths(path: str) -> list[tuple[str, int]]:
  """(name, lines from `def` to the end, less the docstring) of every function in a module."""
  out = []
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      length = node.end_lineno - node.lineno + 1
      first = node.body[0]
      if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        length -= first.end_lineno - first.lineno + 1
      out.append((node.name, length))
  return out


if __name__ == "__main__":
  absltest.main()
