"""Executes every notebook in colabs/ with nbclient on tiny settings.

Each notebook reads its parameters from environment variables in its first code
cell; the defaults are already tiny. `train_builtin.ipynb` runs first and its
trained workdir is handed to `quickstart_score.ipynb` (BMQA_WORKDIR), so only
one tiny training runs. Any other notebook (e.g. captioner_attention.ipynb) is
picked up by the glob and run with the common settings.
"""

import glob
import json
import os

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("ipykernel")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "colabs", "*.ipynb")))
TIMEOUT_S = 600  # per cell; a tiny run takes seconds, but CI machines are shared


def _execute(path: str, env: dict[str, str], monkeypatch) -> nbformat.NotebookNode:
  for k, v in env.items():
    monkeypatch.setenv(k, v)  # the kernel process inherits the environment
  nb = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(
      nb, timeout=TIMEOUT_S, kernel_name="python3",
      resources={"metadata": {"path": os.path.dirname(path)}})
  client.execute()  # raises CellExecutionError naming the failing cell
  return nb


def _text(nb) -> str:
  out = []
  for cell in nb.cells:
    for o in cell.get("outputs", []):
      out.append(o.get("text", "") + o.get("data", {}).get("text/plain", ""))
  return "\n".join(out)


def _images(nb) -> int:
  return sum("image/png" in o.get("data", {}) for c in nb.cells
             for o in c.get("outputs", []))


@pytest.fixture(scope="module")
def common_env(tmp_path_factory):
  return {"BMQA_REPO": ROOT, "BMQA_TINY": "1", "JAX_PLATFORMS": "cpu",
          "BMQA_DATA_DIR": str(tmp_path_factory.mktemp("data")),
          "MPLBACKEND": "module://matplotlib_inline.backend_inline"}


@pytest.fixture(scope="module")
def trained(common_env, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("train_builtin"))
  env = dict(common_env, BMQA_WORKDIR=workdir,
             BMQA_CONFIG_ARGS="modalities=image,tiny=True", BMQA_ST_EPOCHS="1")
  with pytest.MonkeyPatch.context() as mp:
    nb = _execute(os.path.join(ROOT, "colabs", "train_builtin.ipynb"), env, mp)
  return workdir, nb


def test_notebooks_are_found():
  names = {os.path.basename(p) for p in NOTEBOOKS}
  assert {"quickstart_score.ipynb", "train_builtin.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path, common_env, monkeypatch, request):
  name = os.path.basename(path)
  if name == "train_builtin.ipynb":
    workdir, nb = request.getfixturevalue("trained")
    with open(os.path.join(workdir, "eval", "metrics.json")) as f:
      overall = json.load(f)["overall"]
    assert overall["n"] == 10  # the tiny test split: 2 scenes × 5 devices
    assert f"{overall['srcc']:.4f}" in _text(nb)  # the printed table
    assert _images(nb) >= 2  # the capture grid and the loss/scatter figure
  elif name == "quickstart_score.ipynb":
    workdir = request.getfixturevalue("trained")[0]
    nb = _execute(path, dict(common_env, BMQA_WORKDIR=workdir), monkeypatch)
    text = _text(nb)
    assert "FAILED  truncated.jpg" in text and "10 scored, 1 failed" in text
    assert _images(nb) >= 1
  else:
    _execute(path, common_env, monkeypatch)
