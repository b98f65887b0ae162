"""The house's floors, read from the source: no module imports a higher floor or sits in an import
cycle, counting imports inside functions too (an import hidden in a function is still a dependency).

Floors, lowest first (DEVELOPERS' guide): kernels -> the attention function -> layers -> encoders /
fusion / decoders -> models -> data -> sample -> evaluate -> train -> projects -> experiments and
benchmark scripts.
Modules of mmjax's top level that are plain utilities (sharding, registry, ...) sit on floor 0.
"""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Package (or top-level module) of mmjax -> floor. A module may import its own floor or lower ones.
FLOORS = {
  "mmjax.kernels": 0,
  "mmjax.registry": 0,
  "mmjax.sharding": 0,
  "mmjax.config_files": 0,
  "mmjax.distributed": 0,
  "mmjax.tokenizer": 0,
  "mmjax.location_tokens": 0,
  "mmjax.attention": 1,
  "mmjax.layers": 2,
  "mmjax.encoders": 3,
  "mmjax.fusion": 3,
  "mmjax.decoders": 3,
  "mmjax.models": 4,
  "mmjax.pretrained": 4,  # checkpoints into the encoders / decoders / model kinds
  "mmjax.data": 5,
  "mmjax.sample": 6,
  "mmjax.evaluate": 7,
  "mmjax.train": 8,
  "mmjax.projects": 9,
  "mmjax.kernels.benchmarks": 10,  # scripts, like experiments/: they may use anything
}


def _module_files():
  """mmjax module name -> source path (kernels/ is installed as mmjax.kernels)."""
  out = {}
  for top, pkg in (("mmjax", "mmjax"), ("kernels", "mmjax.kernels")):
    for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
      for f in files:
        if not f.endswith(".py"):
          continue
        rel = os.path.relpath(os.path.join(dirpath, f), os.path.join(ROOT, top))[:-3].split(os.sep)
        if rel[-1] == "__init__":
          rel = rel[:-1]
        out[".".join([pkg] + rel)] = os.path.join(dirpath, f)
  return out


def _imports(path: str, module: str, known) -> set[str]:
  """The mmjax modules `module` imports anywhere in its file (top level and inside functions)."""
  tree = ast.parse(open(path, encoding="utf-8").read(), path)
  package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = package.split(".")
        base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
      # `from pkg import mod` imports pkg.mod when that is a module, else a name of pkg.
      names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    else:
      continue
    found.update(n for n in names if n == "mmjax" or n.startswith("mmjax."))
  found.discard(module)
  return found


def _floor(module: str) -> int:
  best = max((p for p in FLOORS if module == p or module.startswith(p + ".")), key=len, default=None)
  if best is None:
    raise AssertionError(f"{module} is on no floor: add its package to FLOORS in tests/test_layering.py.")
  return FLOORS[best]


def _graph():
  files = _module_files()
  return {m: {i for i in _imports(p, m, files) if i != "mmjax"} for m, p in files.items()}


def test_no_module_imports_a_higher_floor():
  bad = [
    f"{m} (floor {_floor(m)}) imports {i} (floor {_floor(i)})"
    for m, deps in sorted(_graph().items())
    for i in sorted(deps)
    if _floor(i) > _floor(m)
  ]
  assert not bad, "\n".join(bad)


def test_no_import_cycles():
  graph = _graph()
  # A package's __init__ re-exporting its own modules is how Python packages work, not a cycle of
  # dependencies: edges from a package to its own submodules are left out.
  edges = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}
  cycles, state = [], {}

  def visit(m, stack):
    state[m] = "open"
    stack.append(m)
    for d in sorted(edges.get(m, ())):
      if state.get(d) == "open":
        cycles.append(" -> ".join(stack[stack.index(d) :] + [d]))
      elif d not in state:
        visit(d, stack)
    stack.pop()
    state[m] = "done"

  for m in sorted(edges):
    if m not in state:
      visit(m, [])
  assert not cycles, "\n".join(cycles)


def test_the_checker_sees_hidden_imports(tmp_path):
  """The checks above must catch an import inside a function, and relative imports."""
  f = tmp_path / "mod.py"
  f.write_text("import os\n\ndef f():\n  from mmjax.train import trainer\n  from . import layers\n")
  known = {"mmjax.train.trainer", "mmjax.layers"}
  assert _imports(str(f), "mmjax.sharding", known) == {"mmjax.train.trainer", "mmjax.layers"}
  assert _floor("mmjax.train.trainer") > _floor("mmjax.sharding")


def test_the_core_imports_no_project():
  """The core (everything but mmjax.projects) never imports a project's code."""
  bad = [
    f"{m} imports {i}"
    for m, deps in _graph().items()
    if not m.startswith("mmjax.projects")
    for i in deps
    if i.startswith("mmjax.projects")
  ]
  assert not bad, "\n".join(bad)


# What only the embedded shapes data knows: its palette, its shape kinds, its question templates and
# the object encoder's slot count. The core must not name any of it (issue: "the core is general").
SHAPES_WORDS = r"\b(red|green|blue|orange|gray|yellow|circles?|triangles?|num_slots|AUXILIARY_KINDS|object_sounds)\b"
SHAPES_PHRASES = r"(closest to|furthest from|how many objects|what shape is|what color is)"


def test_the_core_names_nothing_of_the_shapes_data():
  import re

  bad = []
  for module, path in sorted(_module_files().items()):
    if module.startswith("mmjax.projects"):
      continue
    for n, line in enumerate(open(path, encoding="utf-8"), 1):
      if re.search(SHAPES_WORDS, line) or re.search(SHAPES_PHRASES, line, re.IGNORECASE):
        bad.append(f"{os.path.relpath(path, ROOT)}:{n}: {line.strip()}")
  assert not bad, "\n".join(bad)
