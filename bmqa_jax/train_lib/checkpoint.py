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

A step is verified before it is used: the sha256 of each of its files against
`DIGEST_FILE` (recorded by `save` once the step is complete, so flipped bytes
that still decode to finite numbers are caught too), then readable, then finite.
A damaged step is a `DamagedCheckpointError` naming it; `restore_latest` (the
trainers' resume) moves it aside to `<checkpoint dir>.damaged/<step>` (never
deleted) and resumes from the newest good step; `load_weights` (scoring,
evaluation, the next stage) refuses it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil

from etils import epath
import flax
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from bmqa_jax import log as log_lib
from bmqa_jax.train_lib import workdir as workdir_lib

ITEMS = ("state", "data_iter")
_LEGACY_ITEM = "default"


DIGEST_FILE = "bmqa_sha256.json"  # in each step's folder: {file: sha256}
# tensorstore's and orbax's words for bytes that cannot be decoded.
_DAMAGE = re.compile(
  r"DATA_LOSS|OUT_OF_RANGE|error while reading|Error reading|"
  r"Error decoding|decompress|corrupt|Unexpected end",
  re.I,
)


class CheckpointMismatchError(ValueError):
  """A checkpoint's tree does not match the model the config describes."""


class DamagedCheckpointError(RuntimeError):
  """A saved step is unreadable, non-finite or differs from its digest."""


def manager(directory: str, keep: int | None = None) -> ocp.CheckpointManager:
  """A manager of `directory` (created on first save) keeping the `keep` latest.

  Saves are asynchronous: `save` returns once the state is copied to the host
  (so the next step may reuse the devices' buffers), and the files are written
  meanwhile; `finish(mngr)` waits for them (the step loop does at its end, at a
  stop and before naming the last checkpoint). With several processes too:
  orbax's barriers that are device collectives (`sync_global_devices`) run on
  the caller's thread, in order with the steps, and its background thread
  meets the other processes through the coordination service
  (tests/test_multiprocess.py: a 2 x 2 run stopped, killed and resumed with
  background saves ends with the weights of an uninterrupted 1 x 4 run). The
  waits at different collectives once blamed on them (one device in the step's
  all-reduce, three in an all-gather) were the InfoNCE's conditional
  (`bmqa_jax.losses`)."""
  return ocp.CheckpointManager(
    os.path.abspath(directory),
    options=ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=True, enable_async_checkpointing=True, cleanup_tmp_directories=True
    ),
    item_names=ITEMS,
  )


def finish(mngr: ocp.CheckpointManager) -> None:
  """Waits for the saves under way, then records the digests of the steps they
  completed (`record_digests`)."""
  mngr.wait_until_finished()
  record_digests(str(mngr.directory))


def _reader(directory: str, item_names=None) -> ocp.CheckpointManager:
  """A manager that only reads: it creates nothing, so that processes of a
  cluster that open it need not meet at orbax's directory-creation barrier."""
  return ocp.CheckpointManager(
    os.path.abspath(directory),
    item_names=item_names,
    options=ocp.CheckpointManagerOptions(create=False),
  )


def latest_step(directory: str) -> int | None:
  """The last complete step saved in `directory` (None: none, or no directory)."""
  if not os.path.isdir(directory):
    return None
  return _reader(directory).latest_step()


def all_steps(directory: str) -> list[int]:
  """The complete steps saved in `directory`, oldest first: the folders named by
  their step (orbax writes a step under a temporary name and renames it when
  complete). Read from the folder, not through a manager: one process of a
  cluster may call it alone, and a manager's set-up can wait for the others."""
  if not os.path.isdir(directory):
    return []
  return sorted(
    int(n)
    for n in os.listdir(directory)
    if n.isdigit() and os.path.isdir(os.path.join(directory, n))
  )


def _files(step_dir: str) -> dict[str, str]:
  """{path relative to `step_dir`: sha256} of every file but the digest file."""
  out = {}
  for root, _, names in os.walk(step_dir):
    for n in names:
      path = os.path.join(root, n)
      rel = os.path.relpath(path, step_dir)
      if rel == DIGEST_FILE or _is_digest_tmp(rel):
        continue
      h = hashlib.sha256()
      with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
          h.update(block)
      out[rel] = h.hexdigest()
  return out


def _is_digest_tmp(rel: str) -> bool:
  """A digest file's temporary name, left by a writer killed before its
  rename: `workdir.replacing`'s `.NAME.XXXX.tmp`, or `NAME.tmp` of earlier
  versions."""
  return rel == DIGEST_FILE + ".tmp" or (
    rel.startswith(f".{DIGEST_FILE}.") and rel.endswith(".tmp")
  )


def record_digests(directory: str) -> None:
  """Writes `DIGEST_FILE` into every complete step of `directory` lacking one
  (process 0; a step still being written has no final folder yet and waits for
  the next call). `save` calls it after each save."""
  if jax.process_index() != 0:
    return
  for step in all_steps(directory):
    step_dir = os.path.join(directory, str(step))
    path = os.path.join(step_dir, DIGEST_FILE)
    if os.path.exists(path):
      continue
    try:
      digests = _files(step_dir)
    except FileNotFoundError:  # removed meanwhile (max_to_keep)
      continue
    workdir_lib.atomic_write(path, json.dumps(digests, indent=0, sort_keys=True))


def _check_digest(directory: str, step: int) -> None:
  step_dir = os.path.join(directory, str(step))
  path = os.path.join(step_dir, DIGEST_FILE)
  if not os.path.exists(path):  # saved before digests, or killed before it
    return
  try:
    with open(path) as f:
      want = json.load(f)
  except (OSError, ValueError) as e:
    raise _damaged(directory, step, f"its digest file {DIGEST_FILE} is unreadable ({e})") from e
  got = _files(step_dir)
  bad = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
  if bad:
    what = "missing" if bad[0] not in got else "changed since it was saved"
    raise _damaged(
      directory,
      step,
      f"{bad[0]} is {what}" + (f" (and {len(bad) - 1} more file(s))" if len(bad) > 1 else ""),
    )


def _damaged(directory: str, step: int, why: str) -> DamagedCheckpointError:
  return DamagedCheckpointError(
    f"the checkpoint {os.path.join(directory, str(step))} is damaged: {why}"
  )


def _is_damage(e: Exception) -> bool:
  """An error of reading the bytes (vs. a tree that does not fit the model)."""
  if isinstance(e, (UnicodeDecodeError, json.JSONDecodeError)):
    return True
  if not isinstance(e, (ValueError, KeyError, TypeError)):
    return True  # tensorstore's read errors are plain Exceptions
  return bool(_DAMAGE.search(str(e)))


def _non_finite(tree) -> str | None:
  """The path of the first float array of `tree` with a NaN or infinity in this
  process's shards (None: all finite; `_any_process` tells the others)."""
  for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if not hasattr(x, "dtype") or not jnp.issubdtype(x.dtype, jnp.inexact):
      continue
    parts = [s.data for s in x.addressable_shards] if isinstance(x, jax.Array) else [x]
    if not all(np.isfinite(np.asarray(p)).all() for p in parts):
      return jax.tree_util.keystr(path)
  return None


def _any_process(flag: bool) -> bool:
  """True on every process when `flag` is on one (a cluster reads its own
  shards, so one process may see damage that the others do not)."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  return bool(np.any(multihost_utils.process_allgather(np.array([flag]))))


def _verified(directory: str, step: int, read):
  """`read()`'s tree after checking `step`'s digest, and the tree readable and
  finite; `DamagedCheckpointError` otherwise (on every process alike)."""
  err, out = None, None
  try:
    _check_digest(directory, step)
    out = read()
    where = _non_finite(out)
    if where is not None:
      err = _damaged(directory, step, f"{where} holds NaN or infinite values")
  except DamagedCheckpointError as e:
    err = e
  except CheckpointMismatchError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    if not _is_damage(e):
      raise _mismatch(directory, step, e) from e
    err = _damaged(
      directory,
      step,
      f"it cannot be read ({type(e).__name__}: " + " ".join(str(e).split())[:200] + ")",
    )
  if _any_process(err is not None):
    raise err or _damaged(directory, step, "another process could not read it")
  return out


def quarantine(directory: str, step: int) -> str:
  """Moves step `step` of `directory` to `<directory>.damaged/<step>` (a
  suffix .1, .2... if that exists) and returns where; process 0 moves, the
  others wait."""
  directory = os.path.abspath(directory)
  dest = os.path.join(directory.rstrip(os.sep) + ".damaged", str(step))
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    final, n = dest, 0
    while os.path.exists(final):
      n += 1
      final = f"{dest}.{n}"
    shutil.move(os.path.join(directory, str(step)), final)
    dest = final
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    multihost_utils.sync_global_devices(f"bmqa_quarantine_{directory}_{step}")
  return dest


def latest_good_step(directory: str) -> int | None:
  """The newest step whose files match their digest (None: none). Cheap (no
  arrays are read): for naming a step, e.g. after a non-finite loss."""
  for step in reversed(all_steps(directory)):
    try:
      _check_digest(os.path.abspath(directory), step)
    except DamagedCheckpointError:
      continue
    return step
  return None


def restore_latest(directory: str, abstract_state, log=log_lib.info):
  """(state, step) of the newest good step of `directory`, (None, None) when
  none is saved. A damaged step is named in one log line and moved aside
  (`quarantine`), and the step before it is tried: a killed or damaged save
  costs the steps since the previous one, never the run."""
  for step in reversed(all_steps(directory)):
    try:
      return restore(directory, step, abstract_state), step
    except DamagedCheckpointError as e:
      dest = quarantine(directory, step)
      log(f"{e}; moved to {dest}, resuming from the step before")
  return None, None


def abstract(tree, shard):
  """ShapeDtypeStructs of `tree` with one sharding or a tree of shardings."""
  if isinstance(shard, jax.sharding.Sharding):
    shard = jax.tree.map(lambda _: shard, tree)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shard)


def save(mngr: ocp.CheckpointManager, step: int, state) -> None:
  """Saves `state` as step `step`, in the background (`manager`): the caller
  checks that it is finite first (`train_lib.loop`)."""
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=True)
  record_digests(str(mngr.directory))  # the steps complete so far


def _item(directory: str, step: int) -> str:
  step_dir = os.path.join(directory, str(step))
  if not os.path.isdir(os.path.join(step_dir, "state")) and os.path.isdir(
    os.path.join(step_dir, _LEGACY_ITEM)
  ):
    return _LEGACY_ITEM
  return "state"


def _mismatch(directory: str, step: int, err: Exception) -> CheckpointMismatchError:
  return CheckpointMismatchError(
    f"the checkpoint {os.path.join(directory, str(step))} does not fit the model "
    f"of the config ({type(err).__name__}: {str(err)[:400]}). Was the workdir "
    "trained with another config? Use the workdir's own config.json, or a new "
    "workdir"
  )


def restore(directory: str, step: int, abstract_state):
  """The state saved at `step`, placed as `abstract_state` says (shapes, dtypes,
  shardings); verified (`DamagedCheckpointError` when it is not)."""
  directory = os.path.abspath(directory)
  item = _item(directory, step)

  def read():
    if item == _LEGACY_ITEM:  # flax.serialization's state dict of the train state
      target = flax.serialization.to_state_dict(abstract_state)
      return flax.serialization.from_state_dict(
        abstract_state, _reader(directory).restore(step, args=ocp.args.StandardRestore(target))
      )
    return _reader(directory, ITEMS).restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
    )["state"]

  return _verified(directory, step, read)


def load_weights(
  directory: str,
  abstract_weights=None,
  step: int | None = None,
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
  return _verified(
    directory, step, lambda: _read_weights(directory, step, item, mngr, abstract_weights)
  ), int(step)


def _read_weights(directory, step, item, mngr, abstract_weights) -> dict:
  """The weights of `load_weights`, read (not yet verified)."""
  if abstract_weights is None:
    meta = ocp.PyTreeCheckpointHandler().metadata(
      epath.Path(os.path.join(directory, str(step), item))
    )
    tree = getattr(meta, "tree", meta)
    target = {k: tree[k] for k in ("params", "batch_stats") if k in tree}
    shard = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract_weights = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=shard), target
    )
  abstract_weights = {k: v for k, v in abstract_weights.items() if v is not None}
  empty = [k for k, v in abstract_weights.items() if not jax.tree.leaves(v)]
  target = {k: v for k, v in abstract_weights.items() if k not in empty}
  restored = mngr.restore(
    step,
    args=ocp.args.Composite(
      **{
        item: ocp.args.PyTreeRestore(
          item=target,
          restore_args=ocp.checkpoint_utils.construct_restore_args(target),
          partial_restore=True,
        )
      }
    ),
  )[item]
  return {"params": restored["params"], "batch_stats": restored.get("batch_stats") or {}}
