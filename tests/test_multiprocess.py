"""Several hosts, proven on one machine: 2 JAX processes × 4 CPU devices, with
CPU collectives (gloo) and the cluster given by --coordinator/--num_processes/
--process_id, train, resume and evaluate like 1 process × 8 devices.

Every run is the real launcher (launch/train.py, train_asr.py,
train_captioner.py, evaluate.py) in subprocesses. Plain SGD (an SGD update is
linear in the gradient, so parameters compare at 1e-5 after several steps; see
tests/test_sharding.py). The 2-process BMQA run is killed (both processes,
SIGKILL) once a checkpoint of its second stage exists, restarted, and must end
where the uninterrupted 1-process run ends.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from bmqa_jax.train_lib import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable


def _port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run(script, args, nproc, devices, data_dir, log_dir, kill_when=None):
  """Runs `script` as `nproc` processes of `devices` CPU devices; returns their
  logs. `kill_when()`: SIGKILL every process once it returns True."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", BMQA_DATA_DIR=data_dir,
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  cluster = [[]] if nproc == 1 else [
      [f"--coordinator=127.0.0.1:{_port_once}", f"--num_processes={nproc}",
       f"--process_id={i}"] for _port_once in [_port()] for i in range(nproc)]
  logs = [os.path.join(log_dir, f"{os.path.basename(script)}.{time.time_ns()}.{i}.log")
          for i in range(nproc)]
  procs = [subprocess.Popen([PY, os.path.join(ROOT, script)] + args + c, env=env,
                            cwd=ROOT, stdout=open(l, "w"), stderr=subprocess.STDOUT)
           for c, l in zip(cluster, logs)]
  deadline = time.time() + 900
  while any(p.poll() is None for p in procs) and time.time() < deadline:
    if kill_when is not None and kill_when():
      for p in procs:
        p.send_signal(signal.SIGKILL)
      break
    time.sleep(0.2)
  rcs = [p.wait(timeout=60) for p in procs]
  texts = [open(l).read() for l in logs]
  if kill_when is None:
    assert rcs == [0] * nproc, "\n".join(t[-3000:] for t in texts)
  return texts


def _rel(a, b):
  return np.linalg.norm(np.asarray(a) - np.asarray(b)) / max(np.linalg.norm(np.asarray(b)), 1.0)


def _assert_same_weights(run_a, run_b, where, rel=1e-5):
  for stage in sorted(os.listdir(os.path.join(run_b, where))):
    d = os.path.join(where, stage) if stage.isalpha() else where
    da, db = os.path.join(run_a, d), os.path.join(run_b, d)
    steps = checkpoint.manager(db).all_steps()
    assert steps and checkpoint.manager(da).all_steps()[-1] == steps[-1]
    wa, _ = checkpoint.load_weights(da)
    wb, _ = checkpoint.load_weights(db)
    errs = jax.tree.map(_rel, wa, wb)
    worst = max(jax.tree.leaves(errs))
    assert worst <= rel, f"{d}: relative difference {worst:.2e}"
    if not stage.isalpha():
      break


BMQA = ["launch/train.py", "--config=configs/quickstart.py:tiny=True",
        "--config.stages=ss,st", "--config.st.feature_cache=False"]
for _s, _epochs in (("ss", 0.3), ("st", 0.2)):  # 3 and 2 steps of batch 8
  BMQA += [f"--config.{_s}.{k}={v}" for k, v in dict(
      optimizer="sgd", learning_rate=0.002, warmup_epochs=0, epochs=_epochs,
      checkpoint_every_steps=1, keep_checkpoints=10, log_every_steps=1).items()]


@pytest.fixture(scope="module")
def bmqa(tmp_path_factory):
  root = tmp_path_factory.mktemp("multiprocess")
  data, logs = str(root / "data"), str(root)
  one, two = str(root / "one"), str(root / "two")
  out = dict(one=one, two=two, data=data, logs=logs)
  out["log_one"] = _run(BMQA[0], BMQA[1:] + [f"--workdir={one}"], 1, 8, data, logs)
  st1 = os.path.join(two, "checkpoints", "st", "1")
  killed = _run(BMQA[0], BMQA[1:] + [f"--workdir={two}"], 2, 4, data, logs,
                kill_when=lambda: os.path.isdir(st1))
  out["killed_at"] = checkpoint.latest_step(os.path.join(two, "checkpoints", "st"))
  out["killed_log"] = killed
  out["log_two"] = _run(BMQA[0], BMQA[1:] + [f"--workdir={two}"], 2, 4, data, logs)
  return out


def test_bmqa_two_processes_killed_and_resumed_train_like_one(bmqa):
  """SS (InfoNCE with global negatives, 3 steps) then ST (MSE, BatchNorm over the
  global batch, 2 steps): equal parameters and validation metrics."""
  assert bmqa["killed_at"] == 1  # killed mid-stage
  assert "process 1/2: 4 local of 8 devices" in bmqa["log_two"][1]
  assert "[st] resumed at step 1/2" in bmqa["log_two"][0]
  _assert_same_weights(bmqa["two"], bmqa["one"], os.path.join("checkpoints", "ss"))
  _assert_same_weights(bmqa["two"], bmqa["one"], os.path.join("checkpoints", "st"))
  val = lambda log: [l for l in log.splitlines() if "[st] validation:" in l][-1]
  assert val(bmqa["log_two"][0]) == val(bmqa["log_one"][0])
  assert val(bmqa["log_two"][1]) == val(bmqa["log_one"][0])  # every process
  # Only process 0 writes the shared files.
  for log in (bmqa["killed_log"][1], bmqa["log_two"][1]):
    assert "training the tokenizer" not in log and "building the built-in" not in log


def test_bmqa_evaluation_on_two_processes_equals_one(bmqa):
  one = os.path.join(bmqa["logs"], "eval_one")
  _run("launch/evaluate.py", [f"--workdir={bmqa['one']}", f"--out_dir={one}"], 1, 8,
       bmqa["data"], bmqa["logs"])
  _run("launch/evaluate.py", [f"--workdir={bmqa['one']}"], 2, 4, bmqa["data"],
       bmqa["logs"])
  with open(os.path.join(one, "metrics.json")) as f:
    a = json.load(f)
  with open(os.path.join(bmqa["one"], "eval", "metrics.json")) as f:
    b = json.load(f)
  for k, v in a["overall"].items():
    if isinstance(v, float):
      assert b["overall"][k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
    else:
      assert b["overall"][k] == v, k


def _asr_manifest(root):
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import test_speech  # pylint: disable=g-import-not-at-top
  return test_speech._write_manifest(root, n=12)  # pylint: disable=protected-access


def _caption_manifest(root):
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import test_captioner  # pylint: disable=g-import-not-at-top
  return test_captioner._write_data(root)  # pylint: disable=protected-access


SGD = ["--config.optimizer.optimizer=sgd", "--config.optimizer.learning_rate=0.002",
       "--config.optimizer.warmup_steps=0", "--config.optimizer.grad_clip_norm=0.0",
       "--config.batch_size=8", "--config.checkpoint_every_steps=1",
       "--config.log_every_steps=1"]


@pytest.mark.parametrize("family", ["asr", "captioner"])
def test_recogniser_and_captioner_two_processes_train_like_one(family, tmp_path):
  data = str(tmp_path / "data")
  os.makedirs(data)
  if family == "asr":
    m = _asr_manifest(data)
    args = ["launch/train_asr.py", f"--config=configs/asr.py:manifest={m},runlocal=True,steps=3",
            "--config.model.conv_features=(4, 4)", "--config.model.rnn_hidden=16",
            "--config.features.n_mels=16", "--config.frame_buckets=(512,)",
            "--config.eval_batch_size=2"]
    metrics = "asr_metrics.json"
  else:
    m = _caption_manifest(data)
    args = ["launch/train_captioner.py",
            f"--config=configs/captioner.py:manifest={m},runlocal=True,steps=3",
            "--config.data.eval_split=train", "--config.model.embed_dim=8",
            "--config.model.hidden_dim=16", "--config.model.attention_dim=8",
            "--config.input.image_size=32", "--config.eval_batch_size=4",
            "--config.decode.beam_size=1"]
    metrics = "captioner_metrics.json"
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  _run(args[0], args[1:] + SGD + [f"--workdir={one}"], 1, 8, data, str(tmp_path))
  _run(args[0], args[1:] + SGD + [f"--workdir={two}"], 2, 4, data, str(tmp_path))
  _assert_same_weights(two, one, "checkpoints")
  with open(os.path.join(one, "eval", metrics)) as f:
    a = json.load(f)
  with open(os.path.join(two, "eval", metrics)) as f:
    b = json.load(f)
  for k in ("greedy", "beam"):  # the same transcripts / captions: the same scores
    assert b[k] == a[k], k
