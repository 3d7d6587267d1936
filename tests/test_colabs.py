"""The notebooks in colabs/: Colab-ready, and executed with nbclient.

Every notebook opens as a Colab notebook would need: an "Open in Colab" badge
for its own path in its first cell, a first code cell that installs the package
(tagged `skip-execution`: here the kernel runs the package under test), and no
path into the repository (no `REPO`, no `sys.path` edits, configs imported from
the package). Each is executed in a scratch folder with its tiny defaults:

* `score_photos.ipynb` scores sample photos with the shipped model in its
  third cell (the scores recorded when the model was built), shows them in a
  grid, says what a score means, reports a broken file by name, and scores with
  the workdir `train_builtin.ipynb` trained (BMQA_WORKDIR);
* `train_builtin.ipynb` trains, evaluates and plots; its printed table is the
  workdir's eval/metrics.json;
* `captioner_attention.ipynb` captions a photo and shows the attention maps.
"""

import json
import os
import re

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("ipykernel")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLABS = os.path.join(ROOT, "colabs")
NOTEBOOKS = ("score_photos.ipynb", "train_builtin.ipynb", "captioner_attention.ipynb")
TIMEOUT_S = 600  # per cell; a tiny run takes seconds, but CI machines are shared


def _read(name):
  return nbformat.read(os.path.join(COLABS, name), as_version=4)


def _execute(name: str, env: dict[str, str], cwd, monkeypatch) -> nbformat.NotebookNode:
  for k, v in env.items():
    monkeypatch.setenv(k, v)  # the kernel process inherits the environment
  nb = _read(name)
  client = nbclient.NotebookClient(
    nb, timeout=TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
  )
  client.execute()  # raises CellExecutionError naming the failing cell
  return nb


def _text(cells) -> str:
  out = []
  for cell in cells:
    for o in cell.get("outputs", []):
      out.append(o.get("text", "") + o.get("data", {}).get("text/plain", ""))
  return "\n".join(out)


def _images(nb) -> int:
  return sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def test_the_notebooks_are_these():
  assert sorted(n for n in os.listdir(COLABS) if n.endswith(".ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_notebook_is_colab_ready(name):
  nb = _read(name)
  badge = re.search(
    r"\(https://colab\.research\.google\.com/github/[\w.-]+/[\w.-]+/"
    r"blob/main/colabs/([\w.]+)\)",
    nb.cells[0].source,
  )
  assert nb.cells[0].cell_type == "markdown" and "Open in Colab" in nb.cells[0].source
  assert badge and badge.group(1) == name
  install = next(c for c in nb.cells if c.cell_type == "code")
  assert "%pip install" in install.source and "skip-execution" in install.metadata.tags
  code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
  for needle in ("REPO", "sys.path", '".."', "from configs", "launch/"):
    assert needle not in code, (name, needle)


@pytest.fixture(scope="module")
def common_env(tmp_path_factory):
  return {
    "BMQA_TINY": "1",
    "JAX_PLATFORMS": "cpu",
    "BMQA_DATA_DIR": str(tmp_path_factory.mktemp("data")),
    "MPLBACKEND": "module://matplotlib_inline.backend_inline",
  }


@pytest.fixture(scope="module")
def trained(common_env, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("train_builtin"))
  env = dict(
    common_env,
    BMQA_WORKDIR=workdir,
    BMQA_CONFIG_ARGS="modalities=image,tiny=True",
    BMQA_ST_EPOCHS="1",
  )
  with pytest.MonkeyPatch.context() as mp:
    nb = _execute("train_builtin.ipynb", env, tmp_path_factory.mktemp("cwd"), mp)
  return workdir, nb


def test_train_builtin(trained):
  workdir, nb = trained
  with open(os.path.join(workdir, "eval", "metrics.json")) as f:
    overall = json.load(f)["overall"]
  assert overall["n"] == 10  # the tiny test split: 2 scenes × 5 devices
  assert f"{overall['srcc']:.4f}" in _text(nb.cells)  # the printed table
  assert _images(nb) >= 2  # the capture grid and the loss/scatter figure


def test_score_photos(trained, common_env, tmp_path, monkeypatch):
  from bmqa_jax.bmqa import shipped  # pylint: disable=g-import-not-at-top

  with open(os.path.join(shipped.ASSET_DIR, "reference.json")) as f:
    reference = json.load(f)["photos"]
  nb = _execute(
    "score_photos.ipynb", dict(common_env, BMQA_WORKDIR=trained[0]), tmp_path, monkeypatch
  )
  first3 = nb.cells[:3]
  assert "bmqa_jax.create_metric()" in first3[2].source
  printed = re.findall(r"^(\d\.\d{3})  photos/(\S+)$", _text(first3), re.M)
  assert sorted(n for _, n in printed) == sorted(reference)  # every sample photo,
  for score, name in printed:  # by the shipped model
    assert float(score) == pytest.approx(reference[name], abs=6e-4), name
  markdown = " ".join(c.source for c in nb.cells if c.cell_type == "markdown").split()
  assert "0 is the worst quality, 1 the best" in " ".join(markdown)
  assert _images(nb) >= 2  # the photos' grid, the exposure series
  text = _text(nb.cells)
  assert "FAILED  truncated.jpg" in text and "4 scored, 1 failed" in text
  assert f"'workdir': '{trained[0]}'" in text  # the trained run scored too


def test_captioner_attention(common_env, tmp_path, monkeypatch):
  nb = _execute("captioner_attention.ipynb", common_env, tmp_path, monkeypatch)
  text = _text(nb.cells)
  assert "caption:" in text and "per-word maps in" in text
  assert _images(nb) >= 1
