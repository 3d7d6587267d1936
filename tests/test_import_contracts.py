"""The code's structure: one direction of imports, no cycle, small modules.

The import-linter contracts of `.importlinter` (layers: core → data → models →
{bmqa, speech, captioner, baselines} → experiments; inference never imports a
trainer; the CPU kernels only through `models.image.ops`) are checked with
function-level imports counted, as is the absence of any import cycle
(grimp's graph).
"""

import configparser
import os
import subprocess
import sys
import tokenize

import grimp
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "bmqa_jax")


def test_import_contracts_are_kept():
  lint = os.path.join(os.path.dirname(sys.executable), "lint-imports")
  proc = subprocess.run(
    [lint, "--config", os.path.join(ROOT, ".importlinter"), "--no-cache"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
  assert "0 broken" in proc.stdout


def test_every_top_level_module_is_in_a_layer():
  cfg = configparser.ConfigParser()
  cfg.read(os.path.join(ROOT, ".importlinter"))
  layers = cfg["importlinter:contract:layers"]["layers"]
  named = {
    m.strip()
    for line in layers.splitlines()
    for m in line.replace("|", ":").split(":")
    if m.strip()
  }
  top = {
    f"bmqa_jax.{os.path.splitext(n)[0]}"
    for n in os.listdir(PACKAGE)
    if (n.endswith(".py") and n != "__init__.py")
    or os.path.isfile(os.path.join(PACKAGE, n, "__init__.py"))
  }
  assert top - named == set(), "add these to a layer of .importlinter"


def test_cpu_kernels_are_imported_only_by_the_ops_seam():
  graph = grimp.build_graph("bmqa_jax", include_external_packages=False)
  kernels = "bmqa_jax.models.image.cpu_kernels"
  importers = {
    m
    for k in graph.find_descendants(kernels) | {kernels}
    for m in graph.find_modules_that_directly_import(k)
    if m != kernels and not m.startswith(kernels + ".")
  }
  assert importers == {"bmqa_jax.models.image.ops"}


def test_no_import_cycle():
  graph = grimp.build_graph("bmqa_jax", include_external_packages=False)
  cycles = []
  for m in sorted(graph.modules):
    for imported in graph.find_modules_directly_imported_by(m):
      if graph.chain_exists(importer=imported, imported=m):
        cycles.append((m, imported))
  # A package's __init__ importing its own modules is not a cycle of code.
  cycles = [(a, b) for a, b in cycles if not b.startswith(a + ".") and not a.startswith(b + ".")]
  assert not cycles, cycles[:10]


def _py_files(folder):
  for root, _, files in os.walk(folder):
    for n in files:
      if n.endswith(".py"):
        yield os.path.join(root, n)


def _lines(path):
  with open(path, encoding="utf-8") as f:
    return sum(1 for _ in f)


def _statements(path):
  """Lines that hold something, whatever the layout: each statement once (a
  call the formatter spreads over ten lines counts one), each comment line and
  each line of a docstring or other multi-line string."""
  with open(path, encoding="utf-8") as f:
    tokens = tokenize.generate_tokens(f.readline)
    n = 0
    for t in tokens:
      if t.type in (tokenize.NEWLINE, tokenize.COMMENT):
        n += 1
      elif t.type == tokenize.STRING:
        n += t.string.count("\n")
    return n


def test_modules_stay_under_350_statements():
  """Modules split by topic: under 350 statements and comment or docstring
  lines each (about 400 lines before `ruff format` spread calls over one line
  per argument; counted so that the layout does not move it)."""
  big = {os.path.relpath(p, ROOT): _statements(p) for p in _py_files(PACKAGE)}
  big = {p: n for p, n in big.items() if n >= 350}
  assert not big, big


def test_launch_scripts_stay_under_80_lines():
  folder = os.path.join(ROOT, "launch")
  big = {
    n: _lines(os.path.join(folder, n))
    for n in os.listdir(folder)
    if n.endswith(".py") and _lines(os.path.join(folder, n)) >= 80
  }
  assert not big, big


@pytest.mark.parametrize("needle", ["matplotlib.use(", "DESIGN.md"])
def test_library_sets_no_global_backend_and_cites_existing_files(needle):
  hits = []
  for p in _py_files(PACKAGE):
    with open(p, encoding="utf-8") as f:
      if needle in f.read():
        hits.append(os.path.relpath(p, ROOT))
  assert not hits, hits
