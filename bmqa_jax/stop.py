"""A stop signal stops a run: SIGTERM or SIGINT on any process of a run makes
every process save a checkpoint at one agreed step and exit with status
128 + the signal's number and one line, e.g.

  stopped by SIGTERM at [st] step 7: checkpoint saved; run the same command to resume

`install()` (called by `runtime.start`, after the cluster has started) takes
both signals. It must come after `jax.distributed.initialize`: that installs
JAX's preemption notifier as the C handler of SIGTERM, which only records the
signal for `multihost_utils.reached_preemption_sync_point`; a run that never
asks it trains on to the end and exits 0, so SIGTERM could not stop it.

The training loop (`train_lib.loop.run`) runs `inside_steps()` and asks
`reached()` after dispatching each step (no device read, no message):

* one process: the step after the signal is the stop step;
* several: the signalled process posts JAX's preemption notice to the
  coordination service, and JAX's preemption sync protocol (every process
  reports its step count, they meet at a barrier, the stop step is the
  largest count + 1) makes every process stop after the same step. `reached`
  is `reached_preemption_sync_point` with a count of steps of this process's
  life, which is the same on every process (they run the same stages).

Outside the steps one process stops at once (the signal raises `Stopped`
where the program is; every file the project writes is atomic); several
processes stop at the next step, if there is one. Whatever happens, a process
that got a signal exits at the latest `grace_s` seconds after it (a thread
watches for it even when the program waits in a collective that never
completes), and a second signal exits at once, without a checkpoint.

JAX is imported where it is used: `bmqa_jax.cli.errors` imports this module
before a command restarts itself (`bmqa_jax.huge_pages`).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import select
import signal
import sys
import threading
import time

from bmqa_jax import log as log_lib

SIGNALS = (signal.SIGTERM, signal.SIGINT)
# jaxlib's preemption_sync_manager.cc: the key whose insertion starts the sync
# protocol on every process (its value: the time of death, RFC 3339).
_NOTICE_KEY = "RECEIVED_PREEMPTION_NOTICE"
_WHO_KEY = "bmqa_jax/stop_signal"  # which signal, on which process


class Stopped(BaseException):
  """The run stopped on a signal. A BaseException, like KeyboardInterrupt, so
  that no `except Exception` on the way takes it for an error of its own;
  `code` is the exit status (128 + the signal's number)."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.code = 128 + signum


class _State:
  installed = False
  processes = 1
  synced = False  # several processes, and JAX's preemption sync manager is on
  signum: int | None = None  # the first signal this process got
  at: float | None = None  # its time.monotonic()
  steps = 0  # depth of inside_steps()
  count = 0  # calls of reached(): this process's steps, all stages
  log = log_lib.info


_S = _State()


def install(grace_s: float = 60.0, log=log_lib.info) -> None:
  """Takes SIGTERM and SIGINT (see the module's docstring); from the main
  thread, after the cluster has started. `grace_s`: the longest a process
  lives after its first signal."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax._src import distributed  # pylint: disable=g-import-not-at-top

  _S.processes, _S.log = jax.process_count(), log
  _S.synced = _S.processes > 1 and distributed.global_state.preemption_sync_manager is not None
  if _S.processes > 1 and not _S.synced:
    log(
      "stop signals: JAX's preemption service is off "
      "(jax_enable_preemption_service), so SIGTERM/SIGINT exit after "
      f"--stop_grace_s={grace_s:g} s without a checkpoint"
    )
  for s in SIGNALS:
    signal.signal(s, _handler)
  r, w = os.pipe()
  os.set_blocking(w, False)
  signal.set_wakeup_fd(w, warn_on_full_buffer=False)
  threading.Thread(target=_watch, args=(r, grace_s), daemon=True, name="bmqa_jax.stop").start()
  _S.installed = True


def requested() -> str | None:
  """The signal this process got ('SIGTERM'), or None."""
  return None if _S.signum is None else signal.Signals(_S.signum).name


def _handler(signum, frame) -> None:
  del frame
  if _S.signum is not None:
    return  # a second signal: the watching thread exits
  _S.signum, _S.at = signum, time.monotonic()
  name = signal.Signals(signum).name
  _S.log(
    f"{name}: saving a checkpoint at the next step, then stopping "
    f"({name} again stops at once, without one)"
  )
  if _S.processes > 1:
    _notify_cluster(name)
  elif not _S.steps:
    raise Stopped(
      f"stopped by {name} outside the training steps: nothing "
      "left to save; run the same command to resume",
      signum,
    )


def _client():
  from jax._src import distributed  # pylint: disable=g-import-not-at-top

  return distributed.global_state.client


def _notify_cluster(name: str) -> None:
  """Starts JAX's preemption sync protocol on every process (what JAX's own
  SIGTERM notifier would do)."""
  import jax  # pylint: disable=g-import-not-at-top

  client = _client()
  now = datetime.datetime.now(datetime.timezone.utc).isoformat()
  for key, value in ((_WHO_KEY, f"{name} on process {jax.process_index()}"), (_NOTICE_KEY, now)):
    try:
      client.key_value_set(key, value)
    except Exception:  # pylint: disable=broad-except
      pass  # already set: another process got a signal first


@contextlib.contextmanager
def inside_steps():
  """The training steps: a signal is handled at the next `reached()`. A
  signal that came meanwhile and found no step to stop at (after the last
  step) stops one process when the steps end."""
  _S.steps += 1
  try:
    yield
  finally:
    _S.steps -= 1
  if _S.signum is not None and _S.processes == 1 and not _S.steps:
    name = requested()
    raise Stopped(
      f"stopped by {name} after the training steps; run the same command to resume", _S.signum
    )


def reached() -> bool:
  """Whether to stop after the step just dispatched (every process agrees);
  call once per step on every process."""
  _S.count += 1
  if _S.processes == 1:
    return _S.signum is not None
  if not _S.synced:
    return False
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  return multihost_utils.reached_preemption_sync_point(_S.count)


def stopped(what: str) -> Stopped:
  """The `Stopped` to raise once the stop step's checkpoint is saved; `what`
  says where ('[st] step 7: checkpoint saved')."""
  who, signum = requested(), _S.signum
  if _S.processes > 1:  # the first signal of the cluster, the same on every process
    try:
      who = _client().key_value_try_get(_WHO_KEY)
    except Exception:  # pylint: disable=broad-except
      who = who or "a signal on another process"
    signum = signal.SIGINT if who.startswith("SIGINT") else signal.SIGTERM
  after = f" ({time.monotonic() - _S.at:.1f} s after the signal)" if _S.at is not None else ""
  return Stopped(f"stopped by {who} at {what}{after}; run the same command to resume", int(signum))


def _watch(fd: int, grace_s: float) -> None:
  """Exits the process `grace_s` after its first signal, or at its second,
  whatever its main thread is doing."""
  first = None
  while True:
    timeout = None if first is None else max(0.0, first[1] + grace_s - time.monotonic())
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
      _exit(
        first[0],
        f"stopped by {signal.Signals(first[0]).name}: no step to stop "
        f"at within {grace_s:g} s (--stop_grace_s); exiting without a checkpoint; "
        "run the same command to resume from the last one",
      )
    for signum in os.read(fd, 64):
      if signum not in SIGNALS:
        continue
      if first is not None:
        _exit(
          signum,
          f"stopped by a second {signal.Signals(signum).name}: exiting "
          "now, without a checkpoint; run the same command to resume from the "
          "last one",
        )
      first = (signum, time.monotonic())


def _exit(signum: int, message: str) -> None:
  print(message, file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(128 + signum)  # pylint: disable=protected-access
