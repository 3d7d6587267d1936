"""Checkpoints of every trainer: one orbax manager layout, resume, weights-only loads.

A checkpoint directory holds one folder per saved step with the item `state`
(`bmqa_jax.train_lib.state`: step, params, batch_stats, opt_state); the input
pipelines are functions of the step (`bmqa_jax.data.pipeline.train_loader`), so
a resumed run reads the batches an uninterrupted one would. (Checkpoints of
release 0.1 also hold `data_iter`, the grain iterator's position; it is not
read.) Saves are asynchronous (`manager`) and
atomic (orbax writes a temporary folder and renames it when complete; a folder
left by a killed save is removed the next time the manager opens).

Recogniser checkpoints written before this module existed hold the state as
the single item `default`, in `flax.serialization`'s state-dict form; they are
read as they are.
"""

from __future__ import annotations

import os

from etils import epath
import flax
import jax
import orbax.checkpoint as ocp

ITEMS = ("state", "data_iter")
_LEGACY_ITEM = "default"


class CheckpointMismatchError(ValueError):
  """A checkpoint's tree does not match the model the config describes."""


def manager(directory: str, keep: int | None = None) -> ocp.CheckpointManager:
  """A manager of `directory` (created on first save) keeping the `keep` latest.

  Its saves are asynchronous: `save` returns once the state is copied to the
  host (so the next step may reuse the devices' buffers), and the files are
  written meanwhile; `wait_until_finished()` waits for them (the step loop
  does at its end, at a stop and before naming the last checkpoint)."""
  return ocp.CheckpointManager(
      os.path.abspath(directory), options=ocp.CheckpointManagerOptions(
          max_to_keep=keep, create=True, enable_async_checkpointing=True,
          cleanup_tmp_directories=True),
      item_names=ITEMS)


def _reader(directory: str, item_names=None) -> ocp.CheckpointManager:
  """A manager that only reads: it creates nothing, so that processes of a
  cluster that open it need not meet at orbax's directory-creation barrier."""
  return ocp.CheckpointManager(os.path.abspath(directory), item_names=item_names,
                               options=ocp.CheckpointManagerOptions(create=False))


def latest_step(directory: str) -> int | None:
  """The last complete step saved in `directory` (None: none, or no directory)."""
  if not os.path.isdir(directory):
    return None
  return _reader(directory).latest_step()


def abstract(tree, shard):
  """ShapeDtypeStructs of `tree` with one sharding or a tree of shardings."""
  if isinstance(shard, jax.sharding.Sharding):
    shard = jax.tree.map(lambda _: shard, tree)
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shard)


def save(mngr: ocp.CheckpointManager, step: int, state) -> None:
  """Saves `state` as step `step`, in the background (`manager`): the caller
  checks that it is finite first (`train_lib.loop`)."""
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=True)


def _item(directory: str, step: int) -> str:
  step_dir = os.path.join(directory, str(step))
  if not os.path.isdir(os.path.join(step_dir, "state")) and \
      os.path.isdir(os.path.join(step_dir, _LEGACY_ITEM)):
    return _LEGACY_ITEM
  return "state"


def _mismatch(directory: str, step: int, err: Exception) -> CheckpointMismatchError:
  return CheckpointMismatchError(
      f"the checkpoint {os.path.join(directory, str(step))} does not fit the model "
      f"of the config ({type(err).__name__}: {str(err)[:400]}). Was the workdir "
      "trained with another config? Use the workdir's own config.json, or a new "
      "workdir")


def restore(directory: str, step: int, abstract_state):
  """The state saved at `step`, placed as `abstract_state` says (shapes, dtypes,
  shardings)."""
  directory = os.path.abspath(directory)
  item = _item(directory, step)
  try:
    if item == _LEGACY_ITEM:  # flax.serialization's state dict of the train state
      target = flax.serialization.to_state_dict(abstract_state)
      state = flax.serialization.from_state_dict(
          abstract_state, _reader(directory).restore(
              step, args=ocp.args.StandardRestore(target)))
    else:
      state = _reader(directory, ITEMS).restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(
              abstract_state)))["state"]
  except (ValueError, KeyError, TypeError) as e:
    raise _mismatch(directory, step, e) from e
  return state


def load_weights(directory: str, abstract_weights=None, step: int | None = None,
                 ) -> tuple[dict, int]:
  """({'params', 'batch_stats'}, step) of a checkpoint, without the optimiser.

  For inference and for handing weights to the next stage: nothing of the
  optimiser is built or read. `abstract_weights` ({'params': ...,
  'batch_stats': ...} of ShapeDtypeStructs with shardings) places the arrays;
  None reads them as saved, on this process's first device. `step` None: the latest.
  """
  directory = os.path.abspath(directory)
  step = latest_step(directory) if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {directory}")
  item = _item(directory, step)
  mngr = _reader(directory, (item,))
  try:
    if abstract_weights is None:
      meta = ocp.PyTreeCheckpointHandler().metadata(
          epath.Path(os.path.join(directory, str(step), item)))
      tree = getattr(meta, "tree", meta)
      target = {k: tree[k] for k in ("params", "batch_stats") if k in tree}
      shard = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      abstract_weights = jax.tree.map(
          lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=shard), target)
    abstract_weights = {k: v for k, v in abstract_weights.items() if v is not None}
    empty = [k for k, v in abstract_weights.items() if not jax.tree.leaves(v)]
    target = {k: v for k, v in abstract_weights.items() if k not in empty}
    restored = mngr.restore(step, args=ocp.args.Composite(**{
        item: ocp.args.PyTreeRestore(
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True)}))[item]
  except (ValueError, KeyError, TypeError) as e:
    raise _mismatch(directory, step, e) from e
  out = {"params": restored["params"], "batch_stats": restored.get("batch_stats") or {}}
  return out, int(step)
