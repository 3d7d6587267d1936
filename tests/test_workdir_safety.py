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
  train.train_and_evaluate(_cfg(data_dir), work, log=logs.append, progress=False)
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


@pytest.mark.parametrize("host", ["self", "elsewhere.example"])
def test_live_lock_refuses_a_second_run(data_dir, tmp_path, host):
  host = socket.gethostname() if host == "self" else host
  _write_lock(str(tmp_path), host, os.getpid())  # this test process: alive
  before = _read(tmp_path / ".lock")
  with pytest.raises(workdir_lib.WorkdirLockedError,
                     match=rf"process {os.getpid()} on host {host}"):
    train.train_and_evaluate(_cfg(data_dir), str(tmp_path), log=lambda _: None,
                             progress=False)
  assert _read(tmp_path / ".lock") == before  # not taken, not removed
  assert not (tmp_path / "config.json").exists()


def test_lock_is_exclusive_and_released_only_by_its_owner(tmp_path):
  a = workdir_lib.WorkdirLock(str(tmp_path))
  a.acquire()
  holder = json.loads(_read(tmp_path / ".lock"))
  assert holder["host"] == socket.gethostname() and holder["pid"] == os.getpid()
  with pytest.raises(workdir_lib.WorkdirLockedError, match=str(os.getpid())):
    workdir_lib.WorkdirLock(str(tmp_path)).acquire()
  a.release()
  assert not (tmp_path / ".lock").exists()


# --- the config -----------------------------------------------------------------

def test_same_config_resumes_without_rewriting(trained, data_dir):
  path = os.path.join(trained["work"], "config.json")
  before, mtime = _read(path), os.path.getmtime(path)
  logs = []
  train.train_and_evaluate(_cfg(data_dir), trained["work"], log=logs.append,
                           progress=False)
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


def test_allow_continues_with_the_new_config_and_records_it(trained, data_dir,
                                                            tmp_path):
  work = str(tmp_path / "w")
  shutil.copytree(trained["work"], work)
  logs = []
  train.train_and_evaluate(_cfg(data_dir, learning_rate=0.01), work,
                           log=logs.append, progress=False, config_change="allow")
  assert any("st.learning_rate: 0.001 -> 0.01" in l for l in logs)
  assert json.loads(_read(os.path.join(work, "config.json")))["st"][
      "learning_rate"] == 0.01
  (entry,) = [json.loads(l) for l in open(os.path.join(work, "config_changes.jsonl"))]
  assert ["st.learning_rate", 0.001, 0.01] in entry["changes"]
  assert entry["previous"]["st"]["learning_rate"] == 0.001


def test_cli_refuses_a_changed_config(trained, data_dir):
  path = os.path.join(trained["work"], "config.json")
  before = _read(path)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "launch/train.py",
       "--config=configs/quickstart.py:tiny=True,modalities=image",
       "--config.st.learning_rate=0.01", f"--workdir={trained['work']}"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2  # one `error:` line (bmqa_jax/cli/errors.py)
  assert "was trained with another config" in proc.stderr and \
      "st.learning_rate: 0.001 -> 0.01" in proc.stderr, proc.stderr[-3000:]
  assert _read(path) == before


# --- non-finite steps -----------------------------------------------------------

def test_non_finite_step_raises_and_saves_nothing_non_finite(data_dir, tmp_path):
  # Logged every 100 steps only: the guard checks every step regardless.
  c = _cfg(data_dir, optimizer="sgd", learning_rate=1e30, epochs=0.5,
           log_every_steps=100)
  logs = []
  with pytest.raises(FloatingPointError, match=r"\[st\] non-finite .* at step \d+"):
    train.train_and_evaluate(c, str(tmp_path), log=logs.append, progress=False)
  assert any("non-finite" in l and ("last finite checkpoint is step" in l or
                                    "no checkpoint" in l) for l in logs)
  assert not (tmp_path / ".lock").exists()
  mngr = checkpoint.manager(os.path.join(str(tmp_path), "checkpoints", "st"), 100)
  steps = mngr.all_steps()
  for step in steps:
    st = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))["state"]
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


# --- evaluation records what it scored ------------------------------------------

def test_evaluation_records_checkpoint_and_config_and_keeps_own_metrics(
    trained, data_dir):
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
  other = evaluate.evaluate_workdir(work, manifest=manifest, manifest_split="val",
                                    log=quiet)
  out = os.path.join(work, "eval", f"{stem}_val")
  assert json.loads(_read(os.path.join(out, "metrics.json"))) == json.loads(
      json.dumps(other, default=float))
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
  workdir_lib.own_config(c, str(tmp_path), "refuse", logs.append,
                         infer.complete_config, infer.CONFIG_FILE)
  assert logs == []
  got = workdir_lib.load_config(str(tmp_path), infer.CONFIG_FILE, infer.complete_config)
  assert workdir_lib.as_json(got) == workdir_lib.as_json(c)


def test_complete_takes_free_form_kwargs_whole():
  """A GRU text tower's kwargs are not mixed with the base config's Transformer
  kwargs; a further stage (ft) gets the stage defaults."""
  got = config_bases.complete({"model": {"text": {"name": "gru", "kwargs": {"width": 8}}},
                           "ft": {"loss": "mse", "trainable": ".*"}})
  assert got.model.text.kwargs.to_dict() == {"width": 8}
  assert got.ft.keep_checkpoints == defaults.stage().keep_checkpoints
  assert workdir_lib.as_json(got.input) == workdir_lib.as_json(defaults.input_config())


def test_readme_lists_the_safe_changes():
  """The README's list of what a resumed run may change is SAFE_CONFIG_CHANGES."""
  import re  # pylint: disable=g-import-not-at-top
  with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "README.md")) as f:
    text = f.read()
  block = text.split("<!-- safe-config-changes -->")[1].split(
      "<!-- /safe-config-changes -->")[0]
  assert re.findall(r"`([^`]+)`", block) == list(workdir_lib.SAFE_CONFIG_CHANGES)
