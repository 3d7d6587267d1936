"""The real-photo recipe (configs/biq2021.py: frozen EfficientNet-Lite0, native
windows, cached tower features) as 2 processes × 1 CPU device gives the metrics
of 1 process × 2 devices: each process computes its share of the feature cache,
waits for the other's and reads them all; `launch/evaluate.py` on 2 processes
reads the cache too and gives the same metrics.

A tiny variant of the recipe: 24 training and 8 validation photos of
../shared/data/biq2021_lowlight, 128-px windows, a tiny frozen ResNet (two
levels) instead of EfficientNet-Lite0 (whose compilation took most of 8
minutes here), one head, 3 steps; the real launcher in subprocesses
(tests/test_multiprocess.py's `_run`).
"""

import csv
import json
import os
import re
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_multiprocess  # pylint: disable=g-import-not-at-top,wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIQ = os.path.join(ROOT, "..", "shared", "data", "biq2021_lowlight")


def _manifest(path):
  with open(os.path.join(BIQ, "manifest.csv"), newline="") as f:
    rows = list(csv.DictReader(f))
  keep = [r for r in rows if r["split"] == "train"][:24] + [r for r in rows if r["split"] == "val"][
    :8
  ]
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["image", "mos", "scene", "split"])
    for r in keep:
      w.writerow([os.path.abspath(os.path.join(BIQ, r["image"])), r["mos"], r["scene"], r["split"]])


@pytest.mark.skipif(not os.path.isdir(BIQ), reason="../shared/data/biq2021_lowlight")
def test_biq2021_on_two_processes_gives_the_one_process_metrics(tmp_path):
  man = str(tmp_path / "manifest.csv")
  _manifest(man)
  # One scale: the tiny tower's last map of a 32-px (¼-scale) window is smaller
  # than the 4×4 grid. The ridge probe (fitted by every process) stays on.
  args = [
    f"--config=configs/biq2021.py:manifest={man},crop=128,ensemble=1,scales=1,"
    "epochs=1,batch=8,img=resnet_tiny,init=none,levels=1.3",
    "--config.st.warmup_epochs=0",
    "--config.eval.batch_size=8",
  ]
  data, logs = str(tmp_path / "data"), str(tmp_path)
  one = test_multiprocess._run(  # pylint: disable=protected-access
    "launch/train.py", args + [f"--workdir={tmp_path / 'one'}"], 1, 2, data, logs
  )
  two = test_multiprocess._run(  # pylint: disable=protected-access
    "launch/train.py", args + [f"--workdir={tmp_path / 'two'}"], 2, 1, data, logs
  )
  for log in two:  # each process computed its half of the 24 + 8 photos
    assert "(this process's share: 12)" in log and "(this process's share: 4)" in log
  val = lambda log: re.findall(r"\[st\] validation: .*", log)[-1]
  assert val(two[0]) == val(one[0])
  assert val(two[1]) == val(one[0])
  # Evaluating on 2 processes reads the same cache: the validation split again
  # (biq2021 tests on it), the metrics of training's validation.
  test_multiprocess._run(  # pylint: disable=protected-access
    "launch/evaluate.py", [f"--workdir={tmp_path / 'one'}"], 2, 1, data, logs
  )
  with open(tmp_path / "one" / "eval" / "metrics.json") as f:
    overall = json.load(f)["overall"]
  want = dict(kv.split("=") for kv in val(one[0]).split(": ", 1)[1].split(", "))
  for k in ("plcc", "srcc", "krcc", "rmse"):
    assert f"{overall[k]:.4f}" == want[k], k
