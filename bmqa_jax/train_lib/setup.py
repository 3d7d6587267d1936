"""What every trainer does before its first step: its state, restored or new.

A run restores the latest checkpoint of its checkpoint directory when there is
one (the whole state: step, weights, batch statistics, optimiser) and
initialises otherwise; the step it starts from is also where its input pipeline
starts (`bmqa_jax.data.pipeline.train_loader`: the batches are a function of the
step). BMQA runs this once per stage (`bmqa_jax.bmqa.train`), the recogniser and
the captioner once (`bmqa_jax.speech.train`, `bmqa_jax.captioner.train`), whose
`train_and_evaluate` is `one_run_trainer` of their body.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

import jax

from bmqa_jax import log as log_lib
from bmqa_jax import sharding
from bmqa_jax.train_lib import checkpoint
from bmqa_jax.train_lib import loop
from bmqa_jax.train_lib import workdir as workdir_lib


@dataclasses.dataclass
class Start:
  """A run's state at its first step and the manager it saves with."""

  state: Any
  step: int  # 0 for a new run
  total_steps: int
  mngr: Any  # orbax CheckpointManager

  @property
  def done(self) -> bool:
    """Whether the last step is already saved (nothing is left to train)."""
    return self.step >= self.total_steps


def restore_or_initialise(
  ckpt_dir: str,
  keep: int,
  abstract_state,
  shardings,
  initialise: Callable[[], Any],
  *,
  name: str,
  total_steps: int,
  log=log_lib.info,
) -> Start:
  """The newest good checkpoint of `ckpt_dir` restored into `abstract_state`
  placed as `shardings` (a damaged step is named and moved aside:
  `checkpoint.restore_latest`), or `initialise()` when there is none. `keep`: checkpoints
  the returned manager keeps. Logs `[name] resumed at step s/total` (or
  `[name] complete, skipping` when the last step is saved)."""
  # Before the manager opens: a damaged step is moved aside, not listed.
  state, latest = checkpoint.restore_latest(
    ckpt_dir, checkpoint.abstract(abstract_state, shardings), log
  )
  mngr = checkpoint.manager(ckpt_dir, keep)
  if latest is None:
    return Start(initialise(), 0, total_steps, mngr)
  start = Start(state, int(latest), total_steps, mngr)
  log(
    f"[{name}] complete, skipping"
    if start.done
    else f"[{name}] resumed at step {latest}/{total_steps}"
  )
  return start


def one_run(
  init: Callable, config, mesh, workdir: str, *, name: str, log=log_lib.info
) -> tuple[Start, Any]:
  """`restore_or_initialise` for a trainer of one run (the recogniser, the
  captioner): checkpoints in `workdir/checkpoints`, `config.num_steps` steps,
  `config.keep_checkpoints` kept; a new state is `init(rng)` of `config.seed`,
  every parameter of at least `config.mesh.shard_min_size` split over 'model'.
  Returns the start and the state's sharding."""
  rng = jax.random.key(config.seed)
  abstract = jax.eval_shape(init, rng)
  shardings = sharding.state_sharding(abstract, mesh, sharding.min_shard_size(config))
  start = restore_or_initialise(
    os.path.join(workdir, "checkpoints"),
    config.keep_checkpoints,
    abstract,
    shardings,
    lambda: jax.jit(init, out_shardings=shardings)(rng),
    name=name,
    total_steps=config.num_steps,
    log=log,
  )
  return start, shardings


def run_steps(
  step_fn: Callable,
  start: Start,
  batch_fn: Callable[[int], dict],
  config,
  workdir: str,
  *,
  name: str,
  log=log_lib.info,
  progress: bool = False,
  on_log: Callable | None = None,
) -> tuple[Any, list[dict]]:
  """`loop.run` for a trainer of one run from `start` (`one_run`): the steps,
  cadences, seed and prefetch depth of `config`, TensorBoard in
  `workdir/tensorboard`. Returns the final state and the logged history."""
  return loop.run(
    step_fn,
    start.state,
    batch_fn,
    jax.random.key(config.seed + 1),
    name=name,
    total_steps=config.num_steps,
    mngr=start.mngr,
    log_every=config.log_every_steps,
    checkpoint_every=config.checkpoint_every_steps,
    tensorboard_dir=os.path.join(workdir, "tensorboard"),
    log=log,
    progress=progress,
    on_log=on_log,
    prefetch=config.device_prefetch,
  )


def write_eval(
  workdir: str, metrics_file: str, metrics: dict, table_file: str, rows: list[list]
) -> None:
  """Process 0 writes a one-run trainer's final evaluation to `workdir/eval`:
  `metrics` as JSON in `metrics_file`, `rows` (the header first) as CSV in
  `table_file`."""
  if jax.process_index() != 0:
    return
  out_dir = os.path.join(workdir, "eval")
  os.makedirs(out_dir, exist_ok=True)
  workdir_lib.atomic_write(os.path.join(out_dir, metrics_file), json.dumps(metrics, indent=1))
  workdir_lib.atomic_write_csv(os.path.join(out_dir, table_file), rows)


def one_run_trainer(run: Callable, complete: Callable, config_file: str) -> Callable:
  """The `train_and_evaluate` of a family of one run (the recogniser, the
  captioner): `run(cfg, workdir, log, progress)` while the workdir is owned
  (`workdir.owned`: its lock held, `cfg` checked against its `config_file`,
  which `complete` reads as today's config)."""

  def train_and_evaluate(
    cfg, workdir: str, *, log=log_lib.info, progress: bool = False, config_change: str = "refuse"
  ) -> dict:
    """Trains (or resumes) in `workdir`; returns the evaluation metrics. The
    arguments are those of `bmqa_jax.bmqa.train.train_and_evaluate`."""
    with workdir_lib.owned(cfg, workdir, config_change, log, complete, config_file):
      return run(cfg, workdir, log, progress)

  train_and_evaluate.__module__ = run.__module__
  return train_and_evaluate
