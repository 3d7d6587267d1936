"""launch/benchmark_train.py measures each stage on the plan training runs
(end to end: through the training loop, with --input_delay_ms) and writes the
figures as JSON (issue 13 items 1 and 3, issue 26 item 4)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmark_train_reports_every_stage(tmp_path):
  out = tmp_path / "bench.json"
  proc = subprocess.run(
    [
      sys.executable,
      "launch/benchmark_train.py",
      "--config=configs/quickstart.py:tiny=True",
      "--config.stages=ss,st",
      "--steps=2",
      "--workers=0",
      "--input_delay_ms=5",
      f"--json={out}",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
    env=dict(os.environ, JAX_PLATFORMS="cpu", BMQA_DATA_DIR=str(tmp_path / "data")),
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = json.loads(out.read_text())
  stages = [r for r in rows if "first_step_s" in r]
  assert [r["stage"] for r in stages] == ["ss", "st"]
  for r in stages:
    for k in (
      "synthetic_images_per_s",
      "e2e_images_per_s",
      "pipeline_images_per_s",
      "peak_host_mb",
      "first_step_s",
    ):
      assert r[k] > 0, (r["stage"], k)
    assert 0 < r["e2e_of_ceiling"] <= 1.5  # noisy, but the same order
    # end to end is the training loop's own run (bmqa_jax.train_lib.loop), slowed
    assert r["input_delay_ms"] == 5 and r["prefetch"] == 2
    assert r["store"] == "prepared" and r["store_gb"] > 0 and r["store_build_s"] >= 0
    # The pipeline alone on each store, per worker count (0: one core).
    assert [(i["store"], i["workers"], i["cores"]) for i in r["inputs"]] == [
      ("jpeg", 0, 1),
      ("prepared", 0, 1),
    ]
    for i in r["inputs"]:
      assert i["images_per_s"] > 0 and i["images_per_s_per_core"] == i["images_per_s"]
  assert [r["store_reused"] for r in stages] == [False, True]  # both read 'train'
  assert "stage  ss" in proc.stdout and "stage  st" in proc.stdout
