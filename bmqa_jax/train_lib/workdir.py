"""A workdir owns its config, and one run at a time holds it.

The first run writes `config.json` (atomically); a later run compares its
config with it and refuses a change that would alter what was trained
(`ConfigChangedError`, naming the fields), accepting only the fields of
`SAFE_CONFIG_CHANGES` or an explicit `config_change='allow'` (recorded in
`config_changes.jsonl`). A workdir with checkpoints but no `config.json` is
refused the same way (`ConfigMissingError`): deleting the record must not turn
the check off. `WorkdirLock` (an `fcntl.flock` on `workdir/.lock`, whose host
and pid are information only) keeps a second run out. `owned(...)` does both,
on process 0 only: in a multi-host run only process 0 writes shared files.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import fnmatch
import io
import json
import os
import socket
import tempfile
import time
from typing import Any, BinaryIO, Callable

import jax
import ml_collections as mlc

from bmqa_jax import log as log_lib

CONFIG_FILE = "config.json"

# Config fields a resumed run may change without altering what is trained:
# logging, evaluation and checkpoint cadence, decoding, input-pipeline
# parallelism, and where features and prepared images are kept. Patterns
# (fnmatch) over dotted paths of today's configs (bmqa_jax/config_bases.py; a
# test checks that each names a field of a base config); every other change to a
# workdir's config is refused unless config_change='allow'.
SAFE_CONFIG_CHANGES = (
  "log_every_steps",
  "checkpoint_every_steps",
  "keep_checkpoints",
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
)
_ABSENT = "<absent>"


class ConfigChangedError(ValueError):
  """A run's config differs from its workdir's config.json in a field that
  changes what is trained."""


class ConfigMissingError(ConfigChangedError):
  """A workdir holds checkpoints but no config.json: what they were trained
  with is unknown, so a run cannot tell whether its config changes it."""


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


def config_changes(old, new, complete=None) -> list[tuple[str, Any, Any]]:
  """(field, old value, new value) for each field that differs. `complete`
  (`bmqa_jax.config_bases.complete` for the config's family) reads both sides as
  today's config first, so a field one side lacks (a config written before
  the field existed) counts as its default, and a renamed one by its new name."""
  if complete:
    old, new = complete(old), complete(new)
  a, b = flatten(as_json(old)), flatten(as_json(new))
  out = []
  for k in sorted(set(a) | set(b)):
    va, vb = a.get(k, _ABSENT), b.get(k, _ABSENT)
    if va != vb:
      out.append((k, va, vb))
  return out


def safe_change(field: str) -> bool:
  return any(fnmatch.fnmatchcase(field, p) for p in SAFE_CONFIG_CHANGES)


def _fmt(v) -> str:
  return v if v is _ABSENT else json.dumps(v)


def own_config(
  cfg: mlc.ConfigDict,
  workdir: str,
  config_change: str = "refuse",
  log=log_lib.info,
  complete=None,
  filename: str = CONFIG_FILE,
) -> None:
  """Writes workdir/`filename` on the first run; refuses a changed config later.

  `config_change`: 'refuse' raises `ConfigChangedError` naming every field
  that differs outside `SAFE_CONFIG_CHANGES`; 'allow' records the new config
  and appends the changes to `config_changes.jsonl`. `complete`: see
  `config_changes`. Only process 0 writes.
  """
  if config_change not in ("refuse", "allow"):
    raise ValueError(f"config_change={config_change!r}: 'refuse' or 'allow'")
  path = os.path.join(workdir, filename)
  if not os.path.exists(path):
    ckpts = os.path.join(workdir, "checkpoints")
    if os.path.isdir(ckpts) and os.listdir(ckpts):
      if config_change != "allow":
        raise ConfigMissingError(
          f"{workdir!r} holds checkpoints ({ckpts}) but no {filename}: restore "
          f"{path}, use a new workdir, or config_change='allow' "
          "(launch/train.py --config_change=allow) to continue with this config"
        )
      log(f"config: {path} is missing; continuing with this config (config_change='allow')")
      if jax.process_index() == 0:
        with open(os.path.join(workdir, "config_changes.jsonl"), "a") as f:
          f.write(
            json.dumps(dict(time=time.strftime("%Y-%m-%dT%H:%M:%S%z"), changes=[], previous=None))
            + "\n"
          )
    if jax.process_index() == 0:
      save_config(cfg, workdir, filename)
    return
  with open(path) as f:
    stored = json.load(f)
  changes = config_changes(stored, cfg, complete)
  if not changes:
    return
  text = [f"{k}: {_fmt(a)} -> {_fmt(b)}" for k, a, b in changes]
  unsafe = [t for t, (k, _, _) in zip(text, changes) if not safe_change(k)]
  if unsafe and config_change != "allow":
    raise ConfigChangedError(
      f"{workdir!r} was trained with another config; changed: "
      + "; ".join(unsafe)
      + ". Use a new workdir, or config_change='allow' "
      "(launch/train.py --config_change=allow) to continue with the new one."
    )
  if unsafe:
    log("config changed (config_change='allow'): " + "; ".join(unsafe))
  safe = [t for t in text if t not in unsafe]
  if safe:
    log("config: changed fields that do not alter training: " + "; ".join(safe))
  if jax.process_index() == 0:
    if unsafe:
      with open(os.path.join(workdir, "config_changes.jsonl"), "a") as f:
        f.write(
          json.dumps(
            dict(
              time=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              changes=[[k, a, b] for k, a, b in changes],
              previous=stored,
            )
          )
          + "\n"
        )
    save_config(cfg, workdir, filename)


def save_config(cfg: mlc.ConfigDict, workdir: str, filename: str = CONFIG_FILE) -> None:
  """Writes workdir/`filename` atomically (a unique temporary file, renamed)."""
  atomic_write(os.path.join(workdir, filename), cfg.to_json_best_effort(indent=1))


class WorkdirLock:
  """`workdir/.lock`, held with `fcntl.flock` for the run's life.

  The kernel holds the lock, not the file: it is released when the holder
  closes the file or dies, so a dead run's lock is free again and of racing
  runs exactly one gets it (the file's host and pid are information only, for
  the message of a refused run). A file left by a dead run, empty (a disk full
  at start) or unreadable blocks nothing. The holder removes the file on
  release; a run that locked a file another run has just removed (its inode no
  longer the path's) tries again. A lock whose information could not be
  written is removed and the error raised. Locks on a network filesystem are
  as good as its `flock` (NFS: byte-range locks across hosts).
  """

  def __init__(self, workdir: str, log=log_lib.info):
    self.path = os.path.join(workdir, ".lock")
    self.log = log
    self.me = dict(host=socket.gethostname(), pid=os.getpid())
    self.held = False
    self._fd = None

  def _holder(self, fd: int) -> dict | None:
    """The information in the open lock file (None: empty or unreadable)."""
    try:
      os.lseek(fd, 0, os.SEEK_SET)
      info = json.loads(os.read(fd, 4096).decode())
      return info if isinstance(info, dict) else None
    except (OSError, ValueError):
      return None

  def acquire(self) -> None:
    for _ in range(100):
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        holder = self._holder(fd) or {}
        os.close(fd)
        who = (
          f"process {holder.get('pid')} on host {holder.get('host')}"
          if holder
          else "another run (starting)"
        )
        raise WorkdirLockedError(
          f"{os.path.dirname(self.path)!r} is in use by {who} ({self.path}); wait for it to finish"
        ) from None
      try:
        same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
      except FileNotFoundError:
        same = False
      if not same:  # the previous holder removed the file after we opened it
        os.close(fd)
        continue
      before = self._holder(fd)
      try:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(dict(self.me, time=time.strftime("%Y-%m-%dT%H:%M:%S%z"))).encode())
        os.fsync(fd)
      except BaseException:  # a disk full: leave no half-written lock
        with contextlib.suppress(OSError):
          os.remove(self.path)
        os.close(fd)
        raise
      self._fd, self.held = fd, True
      if before and before.get("pid") is not None:
        self.log(
          f"taking over the stale lock {self.path} of process "
          f"{before.get('pid')} on {before.get('host')} (no longer running)"
        )
      return
    raise WorkdirLockedError(f"could not take {self.path}: it keeps being replaced")

  def release(self) -> None:
    if not self.held:
      return
    self.held = False
    with contextlib.suppress(FileNotFoundError):
      os.remove(self.path)  # while still locked: a waiting run sees a new inode
    os.close(self._fd)
    self._fd = None


def umask() -> int:
  """The process's umask, read without changing it where Linux says it
  (`os.umask` sets it while asking, which another thread could see)."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except (OSError, ValueError, IndexError):
    pass
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


@contextlib.contextmanager
def replacing(path: str):
  """Yields a unique temporary name beside `path` (an empty file with the
  user's umask, as a plain `open` would make it, so that a shared workdir or
  cache stays readable to the team) for the block to fill; renamed over `path`
  when the block ends, removed when it raises. Readers see the old file or the
  new one, never a part, and writers in any process on any host never collide."""
  fd, tmp = tempfile.mkstemp(
    dir=os.path.dirname(os.path.abspath(path)), prefix=f".{os.path.basename(path)}.", suffix=".tmp"
  )
  try:
    os.fchmod(fd, 0o666 & ~umask())  # mkstemp makes it 0600
    os.close(fd)
    yield tmp
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def atomic_write(path: str, data: str | bytes | Callable[[BinaryIO], None]) -> None:
  """Writes `data` to `path` through `replacing`, on disk before the rename:
  text (as UTF-8), bytes, or a callback that writes into the open binary file."""
  with replacing(path) as tmp, open(tmp, "wb") as f:
    if callable(data):
      data(f)
    else:
      f.write(data.encode("utf-8") if isinstance(data, str) else data)
    f.flush()
    os.fsync(f.fileno())


def atomic_write_csv(path: str, rows) -> None:
  """Writes `rows` (the header first) as CSV through `atomic_write`."""
  buf = io.StringIO()
  csv.writer(buf).writerows(rows)
  atomic_write(path, buf.getvalue())


def load_config(workdir: str, filename: str = CONFIG_FILE, complete=None) -> mlc.ConfigDict:
  """The config a workdir was trained with; `complete` (`config_bases.complete` for
  its family) reads it as today's config (renamed fields, new defaults)."""
  path = os.path.join(workdir, filename)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir!r} holds no {filename}: is it a training workdir?")
  with open(path) as f:
    stored = json.load(f)
  return complete(stored) if complete else mlc.ConfigDict(stored)


@contextlib.contextmanager
def owned(
  cfg: mlc.ConfigDict,
  workdir: str,
  config_change: str = "refuse",
  log=log_lib.info,
  complete=None,
  filename: str = CONFIG_FILE,
):
  """Holds `workdir`'s lock (process 0) and its config (`own_config`) meanwhile."""
  os.makedirs(workdir, exist_ok=True)
  lock = WorkdirLock(workdir, log) if jax.process_index() == 0 else None
  if lock:
    lock.acquire()
  try:
    own_config(cfg, workdir, config_change, log, complete, filename)
    yield
  finally:
    if lock:
      lock.release()
