"""The step loop every trainer runs: progress, TensorBoard, non-finite stop,
checkpoint cadence, stop signals and resume.

`run` starts at the state's own step (a resumed state continues where it was
saved) and calls `step_fn(state, batch_fn(step), rng)` until `total_steps`.
The host never waits for the devices without cause, so that step t + 1 is
dispatched while step t runs:

* batches are fetched `prefetch` steps ahead by a thread (`batch_fn` places
  them on the devices, so the copy runs ahead too);
* nothing is read back per step. Every step's metrics carry `finite`
  (`train_lib.state.apply_gradients`: loss, weights and optimiser state); the
  flags since the last check are read before every save and every log, and a
  non-finite step stops the run with `NonFiniteError` (naming that step and
  the last finite checkpoint, which a re-run resumes from) before anything of
  it is saved;
* checkpoints are written in the background (`checkpoint.manager`: orbax
  copies the state to the host, then writes while the steps go on).

Several CPU devices in one process (XLA:CPU's stand-in devices,
`--xla_force_host_platform_device_count`, what the multi-process tests run)
queue steps like GPUs do. (They once ran one step at a time: their devices
waited at different collectives of one step, which was the InfoNCE's
`jnp.diagonal`, a conditional that XLA:CPU ran out of order, not the queue;
`bmqa_jax.losses`.)

A stop signal (`bmqa_jax.stop`) saves the state of the step under way on
every process and raises `stop.Stopped`. `profile(first, last, logdir)` has
steps `first`..`last` of the next stage that runs them traced with
`jax.profiler` (TensorBoard's profile tab reads `logdir`). Metrics are
averaged over each logging window and written to TensorBoard (process 0) and
to the returned history.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from typing import Callable

import jax
import numpy as np
import tqdm
from tensorboardX import SummaryWriter

from bmqa_jax import log as log_lib
from bmqa_jax import stop
from bmqa_jax.train_lib import checkpoint


class NonFiniteError(FloatingPointError):
  """A step produced a non-finite loss, weights or optimiser state; nothing of
  it is saved."""


class _Profile:
  steps: tuple[int, int] | None = None
  logdir: str | None = None


_PROFILE = _Profile()


def profile(first: int, last: int, logdir: str) -> None:
  """Traces steps `first`..`last` (1-based, inclusive) of the next stage that
  runs them into `logdir` (`jax.profiler.start_trace`; once per process)."""
  _PROFILE.steps, _PROFILE.logdir = (first, last), logdir


def run(
  step_fn: Callable,
  state: dict,
  batch_fn: Callable[[int], dict],
  rng,
  *,
  name: str,
  total_steps: int,
  mngr,
  log_every: int,
  checkpoint_every: int,
  tensorboard_dir: str | None = None,
  log=log_lib.info,
  progress: bool = True,
  on_log: Callable[[int, dict], None] | None = None,
  prefetch: int,
) -> tuple[dict, list[dict]]:
  """Trains from `state['step']` to `total_steps`; returns (state, history).

  `batch_fn(step)` gives the global batch of a step (placed on the mesh),
  called in step order from one thread, `prefetch` steps ahead (0: on the
  loop's thread, when the step needs it). `on_log(step, metrics)` is called at
  each logging step with the window's mean metrics (e.g. to print a line); the
  progress bar shows the loss.
  """
  start = int(jax.device_get(state["step"]))
  lead = jax.process_index() == 0
  writer = SummaryWriter(tensorboard_dir) if tensorboard_dir and lead else None
  bar = tqdm.tqdm(
    total=total_steps,
    initial=start,
    desc=f"[{name}]",
    disable=not progress or not lead,
    dynamic_ncols=True,
    mininterval=2.0,
  )
  history, window, t0 = [], [], time.time()
  unchecked = []  # (step, finite, loss) of the steps since the last check
  batches = _Batches(batch_fn, start, total_steps, prefetch)
  tracing = False
  with stop.inside_steps():
    try:
      for step in range(start, total_steps):
        done = step + 1
        tracing = _trace(done, tracing)
        state, metrics = step_fn(state, batches.get(step), rng)
        unchecked.append((done, metrics["finite"], metrics["loss"]))
        window.append(metrics)
        if done % log_every == 0 or done == total_steps:
          _check(unchecked, name, mngr, log)
          host = jax.device_get(window)
          m = {k: float(np.mean([w[k] for w in host])) for k in host[0] if k != "finite"}
          m["steps_per_second"] = len(window) / max(time.time() - t0, 1e-9)
          history.append(dict(step=done, **m))
          if writer:
            for k, v in m.items():
              writer.add_scalar(f"{name}/{k}", v, done)
          bar.set_postfix(loss=f"{m['loss']:.4f}")
          if on_log:
            on_log(done, m)
          window, t0 = [], time.time()
        saved = done % checkpoint_every == 0 or done == total_steps
        if saved:
          _check(unchecked, name, mngr, log)
          checkpoint.save(mngr, done, state)
        bar.update(1)
        if stop.reached():  # a stop signal (bmqa_jax.stop): every process agrees
          if not saved:
            _check(unchecked, name, mngr, log)
            checkpoint.save(mngr, done, state)
          checkpoint.finish(mngr)
          raise stop.stopped(f"[{name}] step {done}: checkpoint saved")
      checkpoint.finish(mngr)
    finally:
      batches.close()
      if tracing:
        jax.profiler.stop_trace()
      bar.close()
      if writer:
        writer.close()
  return state, history


def _check(unchecked: list, name: str, mngr, log) -> None:
  """Reads the `finite` flags of the steps since the last check (one transfer)
  and stops at the first non-finite step."""
  if not unchecked:
    return
  flags = jax.device_get([f for _, f, _ in unchecked])
  for (step, _, loss), ok in zip(unchecked, flags):
    if not bool(ok):
      _non_finite(name, step, float(jax.device_get(loss)), mngr, log)
  unchecked.clear()


def _trace(done: int, tracing: bool) -> bool:
  """Starts or stops the profiler trace of `profile()` before step `done`."""
  if _PROFILE.steps is None:
    return tracing
  first, last = _PROFILE.steps
  if not tracing and done == first:
    jax.profiler.start_trace(_PROFILE.logdir)
    return True
  if tracing and done == last + 1:
    jax.profiler.stop_trace()
    _PROFILE.steps = None  # once
    return False
  return tracing


class _Batches:
  """`batch_fn(step)` for the steps `start`..`stop - 1` in order, `depth` ahead
  on a thread (0: on the caller's thread). An error of `batch_fn` is raised
  by the `get` of its step."""

  def __init__(self, batch_fn, start: int, stop_step: int, depth: int):
    self.batch_fn, self.depth = batch_fn, depth
    if depth <= 0:
      return
    self.queue = queue.Queue(maxsize=depth)
    self.closed = threading.Event()
    self.thread = threading.Thread(
      target=self._fill, args=(start, stop_step), daemon=True, name="bmqa_jax.prefetch"
    )
    self.thread.start()

  def _fill(self, start: int, stop_step: int) -> None:
    for step in range(start, stop_step):
      try:
        item = (step, self.batch_fn(step), None)
      except BaseException as e:  # pylint: disable=broad-except
        item = (step, None, e)
      while not self.closed.is_set():
        try:
          self.queue.put(item, timeout=0.1)
          break
        except queue.Full:
          continue
      if self.closed.is_set() or item[2] is not None:
        return

  def get(self, step: int) -> dict:
    if self.depth <= 0:
      return self.batch_fn(step)
    got, batch, error = self.queue.get()
    assert got == step, (got, step)
    if error is not None:
      raise error
    return batch

  def close(self) -> None:
    if self.depth > 0:
      self.closed.set()
      self.thread.join(timeout=10)


def _non_finite(name: str, step: int, loss: float, mngr, log) -> None:
  checkpoint.finish(mngr)
  last = checkpoint.latest_good_step(str(mngr.directory))
  where = (
    f"the last finite checkpoint is step {last}"
    if last is not None
    else "no checkpoint of this stage was saved"
  )
  msg = (
    f"[{name}] non-finite loss, weights or optimiser state at step {step} "
    f"(loss {loss}); nothing of it is saved; {where}"
  )
  log(msg)
  raise NonFiniteError(
    f"{msg} (a re-run resumes from there). Lower the learning rate or check the "
    "data; a changed config needs a new workdir or config_change='allow'"
  )


def tensorboard_dir(workdir: str, name: str) -> str:
  return os.path.join(workdir, "tensorboard", name)
