"""A workdir owns its config, and one run at a time holds it.

The first run writes `config.json` (atomically); a later run compares its
config with it and refuses a change that would alter what was trained
(`ConfigChangedError`, naming the fields), accepting only the fields of
`SAFE_CONFIG_CHANGES` or an explicit `config_change='allow'` (recorded in
`config_changes.jsonl`). `WorkdirLock` (`workdir/.lock`, holding the host and
pid) keeps a second run out. `owned(...)` does both, on process 0 only: in a
multi-host run only process 0 writes shared files.
"""

from __future__ import annotations

import contextlib
import csv
import fnmatch
import io
import json
import os
import socket
import tempfile
import time
from typing import Any

import jax
import ml_collections as mlc

CONFIG_FILE = "config.json"

# Config fields a resumed run may change without altering what is trained:
# logging, evaluation and checkpoint cadence, input-pipeline parallelism and
# where features and prepared images are kept. Patterns (fnmatch) over dotted
# paths such as 'st.log_every_steps'; every other change to a workdir's config
# is refused unless config_change='allow'.
SAFE_CONFIG_CHANGES = (
    "log_every_steps",
    "checkpoint_every_steps",
    "checkpoint_keep",
    "eval_batch_size",
    "decode.*",
    "data.cache_dir",
    "*.log_every_steps",
    "*.checkpoint_every_steps",
    "*.keep_checkpoints",
    "eval.*",
    "input.workers",
    "input.prefetch",
    "device_prefetch",
    "data.feature_cache_dir",
    "input.prepared_dir",
    "data.check_images",
    "input.max_pixels",
    "model.conv_impl",  # removed: the image encoders' ops follow the backend
)
_ABSENT = "<absent>"


class ConfigChangedError(ValueError):
  """A run's config differs from its workdir's config.json in a field that
  changes what is trained."""


class WorkdirLockedError(RuntimeError):
  """Another run holds the workdir's lock."""


def flatten(tree, prefix: str = "") -> dict[str, Any]:
  """Dotted paths → JSON values; an empty dict is a value of its own."""
  if isinstance(tree, dict) and tree:
    out = {}
    for k, v in tree.items():
      out.update(flatten(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: tree}


def as_json(cfg) -> dict:
  if isinstance(cfg, mlc.ConfigDict):
    return json.loads(cfg.to_json_best_effort())
  return json.loads(json.dumps(cfg))


def config_changes(old, new, defaults=None) -> list[tuple[str, Any, Any]]:
  """(field, old value, new value) for each field that differs. A field one
  side lacks (a config written before the field existed) counts as its default:
  `defaults(old, new)` gives {dotted field: default} (None: no defaults)."""
  old, new = as_json(old), as_json(new)
  a, b = flatten(old), flatten(new)
  dflt = defaults(old, new) if defaults else {}
  out = []
  for k in sorted(set(a) | set(b)):
    va, vb = a.get(k, dflt.get(k, _ABSENT)), b.get(k, dflt.get(k, _ABSENT))
    if va != vb:
      out.append((k, va, vb))
  return out


def safe_change(field: str) -> bool:
  return any(fnmatch.fnmatchcase(field, p) for p in SAFE_CONFIG_CHANGES)


def _fmt(v) -> str:
  return v if v is _ABSENT else json.dumps(v)


def own_config(cfg: mlc.ConfigDict, workdir: str, config_change: str = "refuse",
               log=print, defaults=None, filename: str = CONFIG_FILE) -> None:
  """Writes workdir/`filename` on the first run; refuses a changed config later.

  `config_change`: 'refuse' raises `ConfigChangedError` naming every field
  that differs outside `SAFE_CONFIG_CHANGES`; 'allow' records the new config
  and appends the changes to `config_changes.jsonl`. `defaults`: see
  `config_changes`. Only process 0 writes.
  """
  if config_change not in ("refuse", "allow"):
    raise ValueError(f"config_change={config_change!r}: 'refuse' or 'allow'")
  path = os.path.join(workdir, filename)
  if not os.path.exists(path):
    if jax.process_index() == 0:
      save_config(cfg, workdir, filename)
    return
  with open(path) as f:
    stored = json.load(f)
  changes = config_changes(stored, cfg, defaults)
  if not changes:
    return
  text = [f"{k}: {_fmt(a)} -> {_fmt(b)}" for k, a, b in changes]
  unsafe = [t for t, (k, _, _) in zip(text, changes) if not safe_change(k)]
  if unsafe and config_change != "allow":
    raise ConfigChangedError(
        f"{workdir!r} was trained with another config; changed: "
        + "; ".join(unsafe) + ". Use a new workdir, or config_change='allow' "
        "(launch/train.py --config_change=allow) to continue with the new one.")
  if unsafe:
    log("config changed (config_change='allow'): " + "; ".join(unsafe))
  safe = [t for t in text if t not in unsafe]
  if safe:
    log("config: changed fields that do not alter training: " + "; ".join(safe))
  if jax.process_index() == 0:
    if unsafe:
      with open(os.path.join(workdir, "config_changes.jsonl"), "a") as f:
        f.write(json.dumps(dict(time=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                changes=[[k, a, b] for k, a, b in changes],
                                previous=stored)) + "\n")
    save_config(cfg, workdir, filename)


def save_config(cfg: mlc.ConfigDict, workdir: str, filename: str = CONFIG_FILE) -> None:
  """Writes workdir/`filename` atomically (a unique temporary file, renamed)."""
  atomic_write(os.path.join(workdir, filename), cfg.to_json_best_effort(indent=1))


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    return True
  return True


class WorkdirLock:
  """`workdir/.lock`, created exclusively, holding this run's host and pid.

  A lock of a process that is gone (same host, pid not alive) is taken over;
  any other held lock refuses the run (`WorkdirLockedError`). A lock written by
  another host cannot be checked: delete it by hand once that run is gone.
  """

  def __init__(self, workdir: str, log=print):
    self.path = os.path.join(workdir, ".lock")
    self.log = log
    self.me = dict(host=socket.gethostname(), pid=os.getpid())
    self.held = False

  def _create(self) -> bool:
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w") as f:
      json.dump(dict(self.me, time=time.strftime("%Y-%m-%dT%H:%M:%S%z")), f)
    return True

  def _holder(self) -> dict | None:
    try:
      with open(self.path) as f:
        return json.load(f)
    except FileNotFoundError:
      return {}
    except (OSError, ValueError):
      return None

  def acquire(self) -> None:
    for _ in range(3):
      if self._create():
        self.held = True
        return
      holder = self._holder()
      if holder == {}:  # released meanwhile
        continue
      if holder is None or "pid" not in holder:
        raise WorkdirLockedError(
            f"{self.path} exists but is unreadable: another run may be starting; "
            "delete it if none is")
      host, pid = holder.get("host"), int(holder["pid"])
      if host == self.me["host"] and not _pid_alive(pid):
        self.log(f"taking over the stale lock {self.path} of process {pid} on "
                 f"{host} (no longer running)")
        # Racing takers: each removes the stale file; one wins the O_EXCL create.
        try:
          os.remove(self.path)
        except FileNotFoundError:
          pass
        continue
      raise WorkdirLockedError(
          f"{os.path.dirname(self.path)!r} is in use by process {pid} on host "
          f"{host} ({self.path}); wait for it to finish, or delete the lock if "
          "that run is gone")
    raise WorkdirLockedError(f"could not take {self.path}")

  def release(self) -> None:
    if not self.held:
      return
    self.held = False
    holder = self._holder()
    if holder and holder.get("pid") == self.me["pid"] and \
        holder.get("host") == self.me["host"]:
      os.remove(self.path)


def atomic_write(path: str, text: str) -> None:
  """Writes `text` to `path` through a unique temporary file and a rename."""
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)),
                             prefix=f".{os.path.basename(path)}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def atomic_write_csv(path: str, rows) -> None:
  """Writes `rows` (the header first) as CSV through `atomic_write`."""
  buf = io.StringIO()
  csv.writer(buf).writerows(rows)
  atomic_write(path, buf.getvalue())


def load_config(workdir: str, filename: str = CONFIG_FILE) -> mlc.ConfigDict:
  """The config a workdir was trained with."""
  path = os.path.join(workdir, filename)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir!r} holds no {filename}: is it a training "
                            "workdir?")
  with open(path) as f:
    return mlc.ConfigDict(json.load(f))


@contextlib.contextmanager
def owned(cfg: mlc.ConfigDict, workdir: str, config_change: str = "refuse", log=print,
          defaults=None, filename: str = CONFIG_FILE):
  """Holds `workdir`'s lock (process 0) and its config (`own_config`) meanwhile."""
  os.makedirs(workdir, exist_ok=True)
  lock = WorkdirLock(workdir, log) if jax.process_index() == 0 else None
  if lock:
    lock.acquire()
  try:
    own_config(cfg, workdir, config_change, log, defaults, filename)
    yield
  finally:
    if lock:
      lock.release()
