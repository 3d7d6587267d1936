"""The step loop every trainer runs: progress, TensorBoard, non-finite stop,
checkpoint cadence and resume.

`run` starts at the state's own step (a resumed state continues where it was
saved) and calls `step_fn(state, batch_fn(step), rng)` until `total_steps`.
Every step's metrics carry `finite` (`train_lib.state.apply_gradients`): the
host reads that one scalar each step and stops with `NonFiniteError` before a
non-finite state can be saved, naming the last finite checkpoint (a re-run
resumes from it). A stop signal (`bmqa_jax.stop`) saves the state of the step
under way on every process and raises `stop.Stopped`. Metrics are averaged over each logging window and written
to TensorBoard (process 0) and to the returned history.
"""

from __future__ import annotations

import os
import time
from typing import Callable

import jax
import numpy as np
import tqdm
from tensorboardX import SummaryWriter

from bmqa_jax import stop
from bmqa_jax.train_lib import checkpoint


class NonFiniteError(FloatingPointError):
  """A step produced a non-finite loss or non-finite weights; nothing of it is saved."""


def run(step_fn: Callable, state: dict, batch_fn: Callable[[int], dict], rng, *,
        name: str, total_steps: int, mngr, log_every: int, checkpoint_every: int,
        tensorboard_dir: str | None = None, log=print,
        progress: bool = True, on_log: Callable[[int, dict], None] | None = None,
        ) -> tuple[dict, list[dict]]:
  """Trains from `state['step']` to `total_steps`; returns (state, history).

  `batch_fn(step)` gives the global batch of a step (placed on the mesh). `on_log(step,
  metrics)` is called at each logging step with the window's mean metrics
  (e.g. to print a line); the progress bar shows the loss.
  """
  start = int(jax.device_get(state["step"]))
  lead = jax.process_index() == 0
  writer = SummaryWriter(tensorboard_dir) if tensorboard_dir and lead else None
  bar = tqdm.tqdm(total=total_steps, initial=start, desc=f"[{name}]",
                  disable=not progress or not lead, dynamic_ncols=True, mininterval=2.0)
  history, window, t0 = [], [], time.time()
  with stop.inside_steps():
    try:
      for step in range(start, total_steps):
        state, metrics = step_fn(state, batch_fn(step), rng)
        done = step + 1
        if not bool(jax.device_get(metrics["finite"])):  # one scalar per step
          _non_finite(name, done, float(jax.device_get(metrics["loss"])), mngr, log)
        window.append(metrics)
        if done % log_every == 0 or done == total_steps:
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
          checkpoint.save(mngr, done, state)
        bar.update(1)
        if stop.reached():  # a stop signal (bmqa_jax.stop): every process agrees
          if not saved:
            checkpoint.save(mngr, done, state)
          mngr.wait_until_finished()
          raise stop.stopped(f"[{name}] step {done}: checkpoint saved")
    finally:
      bar.close()
      if writer:
        writer.close()
    mngr.wait_until_finished()
  return state, history


def _non_finite(name: str, step: int, loss: float, mngr, log) -> None:
  mngr.wait_until_finished()
  last = mngr.latest_step()
  where = (f"the last finite checkpoint is step {last}" if last is not None else
           "no checkpoint of this stage was saved")
  msg = (f"[{name}] non-finite loss or weights at step {step} (loss {loss}); "
         f"nothing of it is saved; {where}")
  log(msg)
  raise NonFiniteError(
      f"{msg} (a re-run resumes from there). Lower the learning rate or check the "
      "data; a changed config needs a new workdir or config_change='allow'")


def tensorboard_dir(workdir: str, name: str) -> str:
  return os.path.join(workdir, "tensorboard", name)


