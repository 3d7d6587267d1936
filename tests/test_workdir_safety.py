"""A workdir owns its config, one run holds it at a time, and no non-finite
state is ever saved (bmqa_jax/bmqa/train.py), on a tiny image-only model."""

import json
import os
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from bmqa_jax import config_bases
from bmqa_jax import defaults
from bmqa_jax.bmqa import train
from bmqa_jax.train_lib import workdir as workdir_lib
from bmqa_jax.train_lib import checkpoint
from bmqa_jax.configs import quickstart

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("data"))


def _cfg(data_dir, **st):
  c = quickstart.get_config("tiny=True,modalities=image")
  c.model.image.init = "none"
  c.data.builtin_dir = os.path.join(data_dir, "builtin")
  c.st.update(epochs=0.2, eval_split="", checkpoint_every_steps=1, log_every_steps=1)
  c.st.update(st)
  return c


def _dead_pid() -> int:
  p = subprocess.Popen([sys.executable, "-c", "pass"])
  p.wait()
  return p.pid


def _write_lock(workdir, host, pid):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, ".lock"), "w") as f:
    json.dump(dict(host=host, pid=pid), f)


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
  """A finished run whose workdir held a stale lock (a dead process's) at start."""
  work = str(tmp_path_factory.mktemp("work"))
  dead = _dead_pid()
  _write_lock(work, socket.gethostname(), dead)
  logs = []
  mask = os.umask(0o022)  # a team's usual umask: files readable by the group
  try:
    train.train_and_evaluate(_cfg(data_dir), work, log=logs.append, progress=False)
  finally:
    os.umask(mask)
  return dict(work=work, logs="\n".join(logs), dead=dead)


def _read(path):
  with open(path, "rb") as f:
    return f.read()


# --- the lock -----------------------------------------------------------------


def test_stale_lock_is_taken_over_and_released(trained):
  assert "taking over the stale lock" in trained["logs"]
  assert f"process {trained['dead']}" in trained["logs"]
  assert not os.path.exists(os.path.join(trained["work"], ".lock"))
  assert os.path.isfile(os.path.join(trained["work"], "config.json"))
  assert not [f for f in os.listdir(trained["work"]) if f.endswith(".tmp")]


_HOLD = (
  "import sys\n"
  "from bmqa_jax.train_lib import workdir\n"
  "workdir.WorkdirLock(sys.argv[1]).acquire()\n"
  "print('held', flush=True)\n"
  "sys.stdin.read()\n"
)


def test_files_of_a_run_have_the_users_umask(trained):
  """Under umask 022 every file a run writes is 0644 (atomically written files
  were 0600: a shared workdir was unreadable to the team)."""
  modes = {}
  for root, _, files in os.walk(trained["work"]):
    for f in files:
      p = os.path.join(root, f)
      modes[os.path.relpath(p, trained["work"])] = oct(os.stat(p).st_mode & 0o777)
  assert "config.json" in modes and "stages.json" in modes
  assert {k: v for k, v in modes.items() if v != "0o644"} == {}


def test_live_lock_refuses_a_second_run_until_its_holder_dies(data_dir, tmp_path):
  """A running process holds the lock: a run is refused, naming it; killed
  (no release), its lock is free to the next run."""
  holder = subprocess.Popen(
    [sys.executable, "-c", _HOLD, str(tmp_path)],
    stdin=subprocess.PIPE,
    stdout=subprocess.PIPE,
    text=True,
    env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu"),
  )
  try:
    assert holder.stdout.readline().strip() == "held"
    before = _read(tmp_path / ".lock")
    with pytest.raises(
      workdir_lib.WorkdirLockedError, match=rf"process {holder.pid} on host {socket.gethostname()}"
    ):
      train.train_and_evaluate(_cfg(data_dir), str(tmp_path), log=lambda _: None, progress=False)
    assert _read(tmp_path / ".lock") == before  # not taken, not removed
    assert not (tmp_path / "config.json").exists()
  finally:
    holder.kill()
    holder.wait()
  logs = []
  lock = workdir_lib.WorkdirLock(str(tmp_path), log=logs.append)
  lock.acquire()
  assert f"of process {holder.pid}" in logs[0]
  lock.release()


def test_lock_is_exclusive_and_released_only_by_its_owner(tmp_path):
  a = workdir_lib.WorkdirLock(str(tmp_path))
  a.acquire()
  holder = json.loads(_read(tmp_path / ".lock"))
  assert holder["host"] == socket.gethostname() and holder["pid"] == os.getpid()
  with pytest.raises(workdir_lib.WorkdirLockedError, match=str(os.getpid())):
    workdir_lib.WorkdirLock(str(tmp_path)).acquire()
  a.release()
  assert not (tmp_path / ".lock").exists()


_RACE = r"""
import json, multiprocessing as mp, os, sys, time
from bmqa_jax.train_lib import workdir as workdir_lib

def slow_log(msg):  # a log line to a slow terminal or network disk
  print(msg, file=sys.stderr, flush=True)
  time.sleep(0.01)

def run(i, work, dead, rounds, barrier, out):
  for r in range(rounds):
    if i == 0:  # each round starts from a dead run's lock on this host
      with open(os.path.join(work, ".lock"), "w") as f:
        json.dump(dict(host=workdir_lib.socket.gethostname(), pid=dead), f)
    barrier.wait()
    lock = workdir_lib.WorkdirLock(work, log=slow_log)
    try:
      lock.acquire()
    except workdir_lib.WorkdirLockedError:
      pass
    out.put((r, lock.held))
    barrier.wait()  # every process has tried before the holder lets go
    lock.release()
    barrier.wait()

if __name__ == "__main__":
  work, dead, rounds, nproc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
  ctx = mp.get_context("fork")
  barrier, out = ctx.Barrier(nproc), ctx.Queue()
  procs = [ctx.Process(target=run, args=(i, work, dead, rounds, barrier, out))
           for i in range(nproc)]
  for p in procs:
    p.start()
  held = [0] * rounds
  for _ in range(rounds * nproc):
    r, h = out.get(timeout=120)
    held[r] += h
  for p in procs:
    p.join()
  print(json.dumps(held))
"""


def test_racing_runs_never_share_the_lock(tmp_path):
  """4 processes start together on a dead run's lock, 20 times: one holds it
  each time (with a remove-and-recreate takeover, two often did)."""
  script = tmp_path / "race.py"
  script.write_text(_RACE)
  work = tmp_path / "w"
  work.mkdir()
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [sys.executable, str(script), str(work), str(_dead_pid()), "20", "4"],
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  held = json.loads(proc.stdout.strip().splitlines()[-1])
  assert held == [1] * 20, held
  assert not (work / ".lock").exists()


def test_empty_or_garbled_lock_left_by_a_full_disk_blocks_nothing(tmp_path):
  for content in (b"", b'{"host": "x", "pi', b"\xff\x00"):
    (tmp_path / ".lock").write_bytes(content)
    lock = workdir_lib.WorkdirLock(str(tmp_path), log=lambda _: None)
    lock.acquire()
    assert json.loads(_read(tmp_path / ".lock"))["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / ".lock").exists()


def test_lock_that_cannot_be_written_is_removed(tmp_path, monkeypatch):
  """A disk full while the lock's information is written: the error is raised
  and no half-written lock stays behind to confuse the next run."""

  def full(fd, data):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(workdir_lib.os, "write", full)
  with pytest.raises(OSError, match="No space left"):
    workdir_lib.WorkdirLock(str(tmp_path)).acquire()
  monkeypatch.undo()
  assert not (tmp_path / ".lock").exists()
  lock = workdir_lib.WorkdirLock(str(tmp_path))
  lock.acquire()
  lock.release()


# --- the config -----------------------------------------------------------------


def test_same_config_resumes_without_rewriting(trained, data_dir):
  path = os.path.join(trained["work"], "config.json")
  before, mtime = _read(path), os.path.getmtime(path)
  logs = []
  train.train_and_evaluate(_cfg(data_dir), trained["work"], log=logs.append, progress=False)
  assert "[st] complete, skipping" in logs
  assert _read(path) == before and os.path.getmtime(path) == mtime


def test_changed_training_config_is_refused(trained, data_dir):
  path = os.path.join(trained["work"], "config.json")
  before = _read(path)
  c = _cfg(data_dir, learning_rate=0.01)
  c.model.align.width = 64
  with pytest.raises(workdir_lib.ConfigChangedError) as e:
    train.train_and_evaluate(c, trained["work"], log=lambda _: None, progress=False)
  msg = str(e.value)
  assert "st.learning_rate: 0.001 -> 0.01" in msg
  assert "model.align.width: 32 -> 64" in msg
  assert "config_change='allow'" in msg
  assert _read(path) == before  # the record is untouched
  assert not os.path.exists(os.path.join(trained["work"], ".lock"))
  assert not [f for f in os.listdir(trained["work"]) if f.endswith(".tmp")]


def test_old_config_file_and_safe_changes_are_accepted(trained, data_dir, tmp_path):
  work = str(tmp_path / "w")
  shutil.copytree(trained["work"], work)
  path = os.path.join(work, "config.json")
  old = json.loads(_read(path))  # as the previous version wrote it: no new fields
  del old["input"]["mode"], old["model"]["ensemble"], old["st"]["feature_cache"]
  with open(path, "w") as f:
    json.dump(old, f)
  c = _cfg(data_dir, log_every_steps=3, keep_checkpoints=5)
  c.eval.batch_size = 4
  c.input.workers = 1
  c.data.check_images = False
  logs = []
  train.train_and_evaluate(c, work, log=logs.append, progress=False)
  assert "[st] complete, skipping" in logs
  note = next(l for l in logs if l.startswith("config: changed fields"))
  assert "st.log_every_steps: 1 -> 3" in note and "eval.batch_size: 8 -> 4" in note
  new = json.loads(_read(path))  # the new cadence is recorded
  assert new["st"]["log_every_steps"] == 3 and new["input"]["mode"] == "resize"
  assert not os.path.exists(os.path.join(work, "config_changes.jsonl"))


def test_old_config_file_with_a_non_default_new_field_is_refused(trained, data_dir):
  old = json.loads(_read(os.path.join(trained["work"], "config.json")))
  del old["input"]["mode"], old["model"]["ensemble"]
  c = _cfg(data_dir)
  assert workdir_lib.config_changes(old, c, config_bases.complete) == []
  c.input.mode = "native"
  c.model.ensemble = 3
  got = {k: (a, b) for k, a, b in workdir_lib.config_changes(old, c, config_bases.complete)}
  assert got == {"input.mode": ("resize", "native"), "model.ensemble": (1, 3)}
  assert not any(workdir_lib.safe_change(k) for k in got)
  assert workdir_lib.safe_change("ft.checkpoint_every_steps") and workdir_lib.safe_change("eval.x")


def test_allow_continues_with_the_new_config_and_records_it(trained, data_dir, tmp_path):
  work = str(tmp_path / "w")
  shutil.copytree(trained["work"], work)
  logs = []
  train.train_and_evaluate(
    _cfg(data_dir, learning_rate=0.01), work, log=logs.append, progress=False, config_change="allow"
  )
  assert any("st.learning_rate: 0.001 -> 0.01" in l for l in logs)
  assert json.loads(_read(os.path.join(work, "config.json")))["st"]["learning_rate"] == 0.01
  (entry,) = [json.loads(l) for l in open(os.path.join(work, "config_changes.jsonl"))]
  assert ["st.learning_rate", 0.001, 0.01] in entry["changes"]
  assert entry["previous"]["st"]["learning_rate"] == 0.001


def test_cli_refuses_a_changed_config(trained, data_dir):
  path = os.path.join(trained["work"], "config.json")
  before = _read(path)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [
      sys.executable,
      "launch/train.py",
      "--config=configs/quickstart.py:tiny=True,modalities=image",
      "--config.st.learning_rate=0.01",
      f"--workdir={trained['work']}",
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 2  # one `error:` line (bmqa_jax/cli/errors.py)
  assert (
    "was trained with another config" in proc.stderr
    and "st.learning_rate: 0.001 -> 0.01" in proc.stderr
  ), proc.stderr[-3000:]
  assert _read(path) == before


def test_cli_refuses_a_workdir_whose_config_json_was_deleted(trained, data_dir, tmp_path):
  """Checkpoints without config.json: `rm config.json` does not turn config
  ownership off (main resumed with a new learning rate and exited 0)."""
  work = str(tmp_path / "w")
  shutil.copytree(trained["work"], work)
  os.remove(os.path.join(work, "config.json"))
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [
      sys.executable,
      "launch/train.py",
      "--config=configs/quickstart.py:tiny=True,modalities=image",
      "--config.model.image.init=none",
      f"--config.data.builtin_dir={os.path.join(data_dir, 'builtin')}",
      "--config.st.epochs=0.2",
      "--config.st.eval_split=",
      "--config.st.checkpoint_every_steps=1",
      "--config.st.log_every_steps=1",
      "--config.st.learning_rate=0.5",
      f"--workdir={work}",
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 2, proc.stderr[-3000:]
  err = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(err) == 1 and "holds checkpoints" in err[0] and "no config.json" in err[0], (
    proc.stderr[-3000:]
  )
  assert "put back" in proc.stderr and "--config_change=allow" in proc.stderr
  assert not os.path.exists(os.path.join(work, "config.json"))


# --- non-finite steps -----------------------------------------------------------


def test_non_finite_step_raises_and_saves_nothing_non_finite(data_dir, tmp_path):
  # Logged every 100 steps only: the guard checks every step regardless.
  c = _cfg(data_dir, optimizer="sgd", learning_rate=1e30, epochs=0.5, log_every_steps=100)
  logs = []
  with pytest.raises(FloatingPointError, match=r"\[st\] non-finite .* at step \d+"):
    train.train_and_evaluate(c, str(tmp_path), log=logs.append, progress=False)
  assert any(
    "non-finite" in l and ("last finite checkpoint is step" in l or "no checkpoint" in l)
    for l in logs
  )
  assert not (tmp_path / ".lock").exists()
  mngr = checkpoint.manager(os.path.join(str(tmp_path), "checkpoints", "st"), 100)
  steps = mngr.all_steps()
  for step in steps:
    st = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    for leaf in jax.tree.leaves((st["params"], st["batch_stats"])):
      assert np.all(np.isfinite(np.asarray(leaf))), step
  assert steps  # steps 1 and 2 stay finite, step 3 does not (deterministic)
  assert f"last finite checkpoint is step {max(steps)}" in "\n".join(logs)
  logs.clear()  # a re-run resumes from the last finite checkpoint
  with pytest.raises(FloatingPointError):
    train.train_and_evaluate(c, str(tmp_path), log=logs.append, progress=False)
  assert f"[st] resumed at step {max(steps)}/5" in logs
  # Its last stage never finished: evaluation refuses it unless asked.
  from bmqa_jax.bmqa import evaluate  # pylint: disable=g-import-not-at-top

  with pytest.raises(evaluate.UnfinishedStageError, match="stage st .* has not finished"):
    evaluate.evaluate_workdir(str(tmp_path), log=lambda *_: None)
  assert not (tmp_path / "eval").exists()
  # Asked, it scores step 2's weights (finite, but at lr 1e30 their scores overflow:
  # the metrics name the non-finite predictions instead of reporting numbers).
  with pytest.raises(ValueError, match="non-finite value"):
    evaluate.evaluate_workdir(str(tmp_path), log=lambda *_: None, allow_unfinished=True)


# --- damaged checkpoints ----------------------------------------------------------


def _largest_file(step_dir):
  files = [
    os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs if f != checkpoint.DIGEST_FILE
  ]
  return max(files, key=os.path.getsize)


def _damage(ck, step, how):
  """Damages step `step` of the checkpoint folder `ck` as a disk or a user would."""
  step_dir = os.path.join(ck, str(step))
  if how == "truncated":  # a disk full or a killed copy
    path = _largest_file(step_dir)
    data = _read(path)
    with open(path, "wb") as f:
      f.write(data[: len(data) // 2])
  elif how == "flipped":  # bit rot: the bytes still decode
    path = _largest_file(step_dir)
    data = bytearray(_read(path))
    for i in np.random.default_rng(step).choice(len(data), 64, replace=False):
      data[i] ^= 0x01
    with open(path, "wb") as f:
      f.write(bytes(data))
  else:  # "nan": a NaN written into the step, saved properly (digest and all)
    w, _ = checkpoint.load_weights(ck, step=step)
    meta = ocp.PyTreeCheckpointHandler().metadata(
      __import__("etils").epath.Path(os.path.join(step_dir, "state"))
    )
    tree = getattr(meta, "tree", meta)
    shard = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=shard), tree)
    state = checkpoint.restore(ck, step, abstract)
    leaf = jax.tree.leaves(state["params"])[0]
    state["params"] = jax.tree.map(
      lambda x: x.at[...].set(np.nan) if x is leaf else x, state["params"]
    )
    shutil.rmtree(step_dir)
    mngr = checkpoint.manager(ck)
    checkpoint.save(mngr, step, state)
    checkpoint.finish(mngr)  # a save of one device runs in the background


@pytest.mark.parametrize("how", ["truncated", "flipped", "nan"])
def test_damaged_latest_step_is_moved_aside_and_training_resumes_before_it(
  trained, data_dir, tmp_path, how
):
  """The latest step damaged: a re-run names it in one line, moves it to
  checkpoints/st.damaged/2 (kept), resumes from step 1 and ends with the same
  weights as the undamaged run (main: a tensorstore trace, or a NaN step
  named 'the last finite checkpoint')."""
  work = str(tmp_path / "w")
  shutil.copytree(trained["work"], work)
  ck = os.path.join(work, "checkpoints", "st")
  want, last = checkpoint.load_weights(ck)
  assert last == 2 and checkpoint.all_steps(ck) == [1, 2]
  _damage(ck, last, how)
  logs = []
  train.train_and_evaluate(_cfg(data_dir), work, log=logs.append, progress=False)
  damaged = [l for l in logs if "is damaged" in l]
  assert len(damaged) == 1 and f"checkpoints/st/{last} is damaged" in damaged[0], logs
  assert f"st.damaged/{last}" in damaged[0]
  assert f"[st] resumed at step {last - 1}/{last}" in logs
  assert os.path.isdir(os.path.join(work, "checkpoints", "st.damaged", str(last)))
  got, step = checkpoint.load_weights(ck)
  assert step == last
  assert jax.tree.all(jax.tree.map(np.array_equal, got, want))


def test_score_cli_names_a_damaged_checkpoint(trained, tmp_path):
  """Scoring a workdir whose checkpoint is damaged: one named error, exit 2
  (main: `nan`, exit 0)."""
  from bmqa_jax.bmqa import shipped  # pylint: disable=g-import-not-at-top

  work = str(tmp_path / "w")
  shutil.copytree(trained["work"], work)
  _damage(os.path.join(work, "checkpoints", "st"), 2, "nan")
  photo = shipped.reference_photos(str(tmp_path / "photos"))[0]
  proc = subprocess.run(
    [sys.executable, "launch/score.py", f"--workdir={work}", photo],
    cwd=ROOT,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 2, (proc.stdout, proc.stderr[-3000:])
  assert "checkpoints/st/2 is damaged" in proc.stderr and "nan" not in proc.stdout


def test_flipped_checkpoint_bytes_give_a_named_error_or_the_same_weights(trained, tmp_path):
  """Fuzz: random bytes flipped (fixed seeds) in a copy of the latest step:
  loading it for scoring gives a DamagedCheckpointError naming the step, or
  exactly the saved weights, never other numbers."""
  ck0 = os.path.join(trained["work"], "checkpoints", "st")
  want, _ = checkpoint.load_weights(ck0)
  rng = np.random.default_rng(27)
  for trial in range(6):
    ck = str(tmp_path / str(trial))
    shutil.copytree(ck0, ck)
    files = sorted(
      os.path.join(r, f)
      for r, _, fs in os.walk(os.path.join(ck, "2"))
      for f in fs
      if f != checkpoint.DIGEST_FILE
    )
    path = files[int(rng.integers(len(files)))]
    data = bytearray(_read(path))
    for i in rng.choice(
      len(data), size=int(rng.integers(1, min(64, len(data)) + 1)), replace=False
    ):
      data[i] ^= int(rng.integers(1, 256))
    with open(path, "wb") as f:
      f.write(bytes(data))
    try:
      got, _ = checkpoint.load_weights(ck)
    except checkpoint.DamagedCheckpointError as e:
      assert f"{ck}/2 is damaged" in str(e)
      continue
    assert jax.tree.all(jax.tree.map(np.array_equal, got, want)), trial


def test_a_digest_writer_killed_before_its_rename_damages_nothing(trained, tmp_path):
  """A temporary digest file left in a step (its writer killed before the
  rename) is not one of the step's files: the step still loads, and a step
  lacking its digest gets one beside the leftover."""
  ck = str(tmp_path / "st")
  shutil.copytree(os.path.join(trained["work"], "checkpoints", "st"), ck)
  want, _ = checkpoint.load_weights(ck)
  for step in (1, 2):
    with open(os.path.join(ck, str(step), f".{checkpoint.DIGEST_FILE}.k1ll3d.tmp"), "w") as f:
      f.write('{"half": ')
  os.remove(os.path.join(ck, "1", checkpoint.DIGEST_FILE))
  checkpoint.record_digests(ck)
  assert os.path.exists(os.path.join(ck, "1", checkpoint.DIGEST_FILE))
  for step in (1, 2):
    got, _ = checkpoint.load_weights(ck, step=step)
  assert jax.tree.all(jax.tree.map(np.array_equal, got, want))


# --- evaluation records what it scored ------------------------------------------


def test_evaluation_records_checkpoint_and_config_and_keeps_own_metrics(trained, data_dir):
  import hashlib  # pylint: disable=g-import-not-at-top
  from bmqa_jax.bmqa import evaluate  # pylint: disable=g-import-not-at-top
  from bmqa_jax.experiments import report  # pylint: disable=g-import-not-at-top
  from bmqa_jax.data import datasets  # pylint: disable=g-import-not-at-top

  work = trained["work"]
  quiet = lambda _: None
  last = checkpoint.manager(os.path.join(work, "checkpoints", "st"), 2).latest_step()
  own = evaluate.evaluate_workdir(work, log=quiet)
  sha = hashlib.sha256(_read(os.path.join(work, "config.json"))).hexdigest()
  assert own["checkpoint"] == {"stage": "st", "step": last, "finished": True}
  assert own["config_sha256"] == sha
  path = os.path.join(work, "eval", "metrics.json")
  assert json.loads(_read(path))["checkpoint"]["step"] == last
  before = _read(path)
  manifest, _ = datasets.manifest_paths(_cfg(data_dir), quiet)
  stem = os.path.splitext(os.path.basename(manifest))[0]
  other = evaluate.evaluate_workdir(work, manifest=manifest, manifest_split="val", log=quiet)
  out = os.path.join(work, "eval", f"{stem}_val")
  assert json.loads(_read(os.path.join(out, "metrics.json"))) == json.loads(
    json.dumps(other, default=float)
  )
  assert other["manifest"] == os.path.abspath(manifest) and other["config_sha256"] == sha
  assert {"report.md", "scatter.png", "predictions.csv"} <= set(os.listdir(out))
  assert _read(path) == before  # the run's own metrics are kept
  (row,) = report.collect([work])  # launch/report.py still reads them
  assert row["metrics"]["n"] == own["overall"]["n"] == 10


def _base_fields() -> set[str]:
  """Every dotted field of today's base configs (BMQA with its stages, the
  recogniser, the captioner)."""
  out = set()
  for base in config_bases.BASES.values():
    out |= set(workdir_lib.flatten(workdir_lib.as_json(base())))
  return out


def test_each_safe_change_names_a_field_of_todays_configs():
  fields = _base_fields()
  for pattern in workdir_lib.SAFE_CONFIG_CHANGES:
    assert any(workdir_lib.fnmatch.fnmatchcase(f, pattern) for f in fields), pattern
  # The old spellings are read under today's names, and no config has them.
  for old in (*config_bases.RENAMED_FIELDS, *config_bases.REMOVED_FIELDS):
    assert old not in fields, old


def test_old_spellings_are_read_under_todays_names(tmp_path):
  """A recogniser workdir written with checkpoint_keep, decode.beam_width and
  optimizer.b1/b2 resumes under today's config without a reported change."""
  from bmqa_jax.configs import asr  # pylint: disable=g-import-not-at-top
  from bmqa_jax.speech import infer  # pylint: disable=g-import-not-at-top

  c = asr.get_config("runlocal=True")
  old = workdir_lib.as_json(c)
  old["checkpoint_keep"] = old.pop("keep_checkpoints")
  old["decode"]["beam_width"] = old["decode"].pop("beam_size")
  o = old["optimizer"]
  o["b1"], o["b2"] = o.pop("adam_b1"), o.pop("adam_b2")
  del o["optimizer"], o["schedule"]
  with open(tmp_path / infer.CONFIG_FILE, "w") as f:
    json.dump(old, f)
  logs = []
  workdir_lib.own_config(
    c, str(tmp_path), "refuse", logs.append, infer.complete_config, infer.CONFIG_FILE
  )
  assert logs == []
  got = workdir_lib.load_config(str(tmp_path), infer.CONFIG_FILE, infer.complete_config)
  assert workdir_lib.as_json(got) == workdir_lib.as_json(c)


def test_complete_takes_free_form_kwargs_whole():
  """A GRU text tower's kwargs are not mixed with the base config's Transformer
  kwargs; a further stage (ft) gets the stage defaults."""
  got = config_bases.complete(
    {
      "model": {"text": {"name": "gru", "kwargs": {"width": 8}}},
      "ft": {"loss": "mse", "trainable": ".*"},
    }
  )
  assert got.model.text.kwargs.to_dict() == {"width": 8}
  assert got.ft.keep_checkpoints == defaults.stage().keep_checkpoints
  assert workdir_lib.as_json(got.input) == workdir_lib.as_json(defaults.input_config())


def test_readme_lists_the_safe_changes():
  """The README's list of what a resumed run may change is SAFE_CONFIG_CHANGES."""
  import re  # pylint: disable=g-import-not-at-top

  with open(
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
  ) as f:
    text = f.read()
  block = text.split("<!-- safe-config-changes -->")[1].split("<!-- /safe-config-changes -->")[0]
  assert re.findall(r"`([^`]+)`", block) == list(workdir_lib.SAFE_CONFIG_CHANGES)
