"""launch/report.py: several evaluated workdirs → one table beside the paper's."""

import json
import os
import subprocess
import sys

from bmqa_jax.experiments import report
from bmqa_jax.configs import ablation
from bmqa_jax.configs import mliq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _workdir(root, name, cfg, overall=None):
  w = os.path.join(root, name)
  os.makedirs(os.path.join(w, "eval"))
  with open(os.path.join(w, "config.json"), "w") as f:
    f.write(cfg.to_json_best_effort())
  if overall is not None:
    with open(os.path.join(w, "eval", "metrics.json"), "w") as f:
      json.dump({"overall": overall, "per_device": {}}, f)
  return w


def test_paper_tables_are_complete():
  assert len([k for k in report.PAPER if k.startswith("table1/")]) == 15
  assert len([k for k in report.PAPER if k.startswith("table2/")]) == 8
  assert report.PAPER["table1/convnext_base+transformer"] == (0.9121, 0.9065, 0.0802)
  assert report.PAPER["table1/vgg19+bow"] == (0.8538, 0.8532, 0.0885)
  assert report.PAPER["table2/h"] == (0.8989, 0.8877, 0.0830)
  # Table 2 (h) is Table 1's RN-50 + TransF: the paper reports the same numbers.
  assert report.PAPER["table2/h"] == report.PAPER["table1/resnet50+transformer"]
  for img in mliq.TABLE1_IMAGE:  # every config of Table 1 has its entry
    for txt in mliq.TABLE1_TEXT:
      assert mliq.get_config(f"img={img},txt={txt}").paper_ref in report.PAPER


def test_table2_report(tmp_path):
  m = lambda p, s, r: {"plcc": p, "srcc": s, "krcc": 0.5, "rmse": r, "n": 100}
  dirs = [
    _workdir(tmp_path, "ablation_e", ablation.get_config("method=e"), m(0.81, 0.8, 0.11)),
    _workdir(tmp_path, "ablation_a", ablation.get_config("method=a"), m(0.7123, 0.7, 0.1345)),
    _workdir(tmp_path, "ablation_c", ablation.get_config("method=c")),
  ]
  rows = report.collect(dirs)
  assert [r["run"] for r in rows] == ["ablation_a", "ablation_c", "ablation_e"]
  table = report.markdown(rows)
  assert table.startswith("### Table 2 (ablation)")
  line_a = [l for l in table.splitlines() if l.startswith("| ablation_a")][0]
  cells = [c.strip() for c in line_a.strip("|").split("|")]
  assert cells == [
    "ablation_a",
    "(a) ST image",
    "st",
    "resnet50",
    "0.7123",
    "0.7000",
    "0.1345",
    "100",
    "0.7964",
    "0.7934",
    "0.1082",
  ]
  line_c = [l for l in table.splitlines() if l.startswith("| ablation_c")][0]
  assert "not evaluated" in line_c and "0.8567" in line_c
  line_e = [l for l in table.splitlines() if l.startswith("| ablation_e")][0]
  assert "resnet50+transformer" in line_e and "ss,st" in line_e

  out = tmp_path / "t2.md"
  proc = subprocess.run(
    [sys.executable, "launch/report.py", f"--out={out}", *dirs],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout == table == out.read_text()


def test_runs_without_paper_entry(tmp_path):
  c = mliq.get_config("img=resnet18,txt=lstm")
  w = _workdir(tmp_path, "other", c, {"plcc": 0.5, "srcc": 0.4, "krcc": 0.3, "rmse": 0.2, "n": 10})
  table = report.markdown(report.collect([w]))
  assert table.startswith("### BMQA runs")
  assert "| other | – | pt,ss,st | resnet18+lstm | 0.5000 |" in table


def test_report_reads_only_metrics_of_the_workdirs_config(tmp_path):
  """A metrics.json scored under another config, of another manifest, or of an
  unfinished stage is not a result of this run (issue 11 item 9)."""
  import hashlib  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  from bmqa_jax.experiments import report  # pylint: disable=g-import-not-at-top

  w = tmp_path / "run"
  (w / "eval").mkdir(parents=True)
  cfg = {
    "stages": "st",
    "paper_ref": "",
    "model": {"modalities": ["image"], "image": {"name": "resnet50"}},
  }
  (w / "config.json").write_text(json.dumps(cfg))
  sha = hashlib.sha256((w / "config.json").read_bytes()).hexdigest()
  overall = {"plcc": 0.9, "srcc": 0.8, "rmse": 0.1, "n": 10}

  def status(**extra):
    (w / "eval" / "metrics.json").write_text(json.dumps(dict(overall=overall, **extra)))
    return report.own_test_metrics(str(w))

  assert status(config_sha256=sha) == (overall, "ok")
  assert status(config_sha256="0" * 64)[0] is None
  assert "stale" in status(config_sha256="0" * 64)[1]
  assert status(config_sha256=sha, manifest="/other.csv")[0] is None
  assert status(config_sha256=sha, checkpoint={"finished": False})[0] is None
  (w / "eval" / "metrics.json").write_text(
    json.dumps(dict(overall=overall, config_sha256="1" * 64))
  )
  (row,) = report.collect([str(w)])
  assert row["metrics"] is None and "stale" in report.markdown([row])
