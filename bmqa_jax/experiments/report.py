"""Tables of several evaluated runs beside the paper's numbers (Table 1, Table 2).

`collect(workdirs)` reads each workdir's `config.json` (written by training)
and `eval/metrics.json` (written by launch/evaluate.py); `markdown(rows)`
formats one row per run — PLCC, SRCC, RMSE of the test split and, when the
run's `config.paper_ref` names an entry of Table 1 or Table 2, the paper's
numbers beside them (configs/mliq.py and configs/ablation.py set it).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Sequence

# Table 1 (MLIQ): image encoder + text encoder → (PLCC, SRCC, RMSE).
_T1_IMAGE = ("vgg19", "resnet50", "efficientnet_b4", "vit_b32", "convnext_base")
_T1_TEXT = ("bow", "rnn", "transformer")
_T1 = (
  (0.8538, 0.8532, 0.0885),
  (0.8670, 0.8636, 0.0869),
  (0.8731, 0.8685, 0.0847),
  (0.8743, 0.8750, 0.0845),
  (0.8859, 0.8851, 0.0824),
  (0.8989, 0.8877, 0.0830),
  (0.8760, 0.8719, 0.0834),
  (0.8898, 0.8886, 0.0810),
  (0.8987, 0.8922, 0.0825),
  (0.8802, 0.8774, 0.0827),
  (0.8879, 0.8871, 0.0822),
  (0.9089, 0.9040, 0.0816),
  (0.8822, 0.8844, 0.0832),
  (0.8970, 0.8984, 0.0817),
  (0.9121, 0.9065, 0.0802),
)
# Table 2 (MLIQ, RN-50 + TransF): method → (PLCC, SRCC, RMSE).
_T2 = {
  "a": (0.7964, 0.7934, 0.1082),
  "b": (0.7504, 0.7466, 0.1130),
  "c": (0.8567, 0.8556, 0.0902),
  "d": (0.8209, 0.8183, 0.0932),
  "e": (0.8614, 0.8610, 0.0896),
  "f": (0.8707, 0.8709, 0.0868),
  "g": (0.8753, 0.8721, 0.0871),
  "h": (0.8989, 0.8877, 0.0830),
}
T2_LABELS = {
  "a": "ST image",
  "b": "ST text",
  "c": "SS both → ST image",
  "d": "SS both → ST text",
  "e": "SS → ST both",
  "f": "PT CL → SS → ST",
  "g": "PT RE → SS → ST",
  "h": "PT FM → SS → ST",
}

PAPER: dict[str, tuple[float, float, float]] = {
  f"table1/{i}+{t}": _T1[3 * a + b] for a, i in enumerate(_T1_IMAGE) for b, t in enumerate(_T1_TEXT)
}
PAPER.update({f"table2/{m}": v for m, v in _T2.items()})
_ORDER = {ref: k for k, ref in enumerate(PAPER)}


def collect(workdirs: Sequence[str]) -> list[dict[str, Any]]:
  """One row per workdir: name, paper_ref, what ran, metrics (or None), paper."""
  rows = []
  for w in workdirs:
    cpath = os.path.join(w, "config.json")
    if not os.path.exists(cpath):
      raise FileNotFoundError(f"{w!r} holds no config.json: is it a training workdir?")
    with open(cpath) as f:
      cfg = json.load(f)
    ref = cfg.get("paper_ref", "") or ""
    overall, status = own_test_metrics(w)
    model = cfg["model"]
    towers = []
    if "image" in model["modalities"]:
      towers.append(model["image"]["name"])
    if "text" in model["modalities"]:
      towers.append(model["text"]["name"])
    rows.append(
      dict(
        run=os.path.basename(os.path.normpath(w)),
        workdir=w,
        paper_ref=ref,
        stages=cfg["stages"],
        towers="+".join(towers),
        metrics=overall,
        status=status,
        paper=PAPER.get(ref),
      )
    )
  return sorted(rows, key=lambda r: (_ORDER.get(r["paper_ref"], len(_ORDER)), r["run"]))


def own_test_metrics(workdir: str) -> tuple[dict | None, str]:
  """(overall metrics, 'ok') of workdir/eval/metrics.json when it scored the
  workdir's current config.json on the run's own data; else (None, why)."""
  mpath = os.path.join(workdir, "eval", "metrics.json")
  if not os.path.exists(mpath):
    return None, "not evaluated"
  with open(mpath) as f:
    m = json.load(f)
  with open(os.path.join(workdir, "config.json"), "rb") as f:
    sha = hashlib.sha256(f.read()).hexdigest()
  if m.get("config_sha256", sha) != sha:
    return None, "stale: config changed since evaluation"
  if m.get("manifest"):
    return None, "eval/metrics.json scored another manifest"
  if m.get("checkpoint", {}).get("finished") is False:
    return None, "stale: scored an unfinished stage"
  return m["overall"], "ok"


def _f(x) -> str:
  return "–" if x is None else f"{x:.4f}"


def markdown(rows: Sequence[dict[str, Any]]) -> str:
  """A markdown table: the run's PLCC/SRCC/RMSE, then the paper's."""
  refs = {r["paper_ref"].split("/")[0] for r in rows if r["paper_ref"]}
  title = {
    frozenset({"table1"}): "Table 1 (image × text encoder)",
    frozenset({"table2"}): "Table 2 (ablation)",
  }.get(frozenset(refs), "BMQA runs")
  head = (
    "| run | entry | stages | towers | PLCC | SRCC | RMSE | n "
    "| paper PLCC | paper SRCC | paper RMSE |"
  )
  lines = [f"### {title}", "", head, "|" + "---|" * 11]
  for r in rows:
    m = r["metrics"] or {}
    p = r["paper"] or (None, None, None)
    entry = r["paper_ref"] or "–"
    if entry.startswith("table2/"):
      entry = f"({entry[7:]}) {T2_LABELS[entry[7:]]}"
    elif entry.startswith("table1/"):
      entry = entry[7:]
    n = (
      m.get("n", "not evaluated") if r["metrics"] is not None else r.get("status", "not evaluated")
    )
    lines.append(
      f"| {r['run']} | {entry} | {r['stages']} | {r['towers']} | "
      f"{_f(m.get('plcc'))} | {_f(m.get('srcc'))} | {_f(m.get('rmse'))} | {n} | "
      f"{_f(p[0])} | {_f(p[1])} | {_f(p[2])} |"
    )
  lines += [
    "",
    "PLCC/SRCC/RMSE of each run's test split (`launch/evaluate.py`, "
    "raw predictions); paper: Table 1/2 of the paper on MLIQ. A run on "
    "other data or at another size is not expected to match them.",
  ]
  return "\n".join(lines) + "\n"
