"""The package's shape: no import cycle among the library's modules, and the parameter tree's
top-level keys spelled only by the model."""

import ast
import os
import re

from absl.testing import absltest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("starflow_jax", "data_pipeline")


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


if __name__ == "__main__":
  absltest.main()
