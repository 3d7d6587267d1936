"""A frozen image tower's features, computed once per image and view.

When a stage freezes the image tower (its `trainable` regex leaves
`image_encoder/...` out), every step would run the same tower on the same
pixels again. With `config.<stage>.feature_cache=True` (the default) the
trainer instead computes `BMQA.tower_features` (the tower's token maps after
the parameter-free `token_grid` statistics) once for every image and view,
stores them under `workdir/feature_cache/<key>/`, and trains the alignment
(Eq. 7) and the probe (Eq. 10) from them.

Views: the evaluation view of the input mode (`resize`: the centre crop;
`native`: every window of `config.input.eval_grid`) and, with
`config.input.flip`, their mirror images. Training draws one view per sample
at random; evaluation averages the unflipped views, exactly as the image path
does.

The cache folder (`config.data.feature_cache_dir`, default
`workdir/feature_cache`) holds one sub-folder per tower setting, named by a
hash of everything the features depend on besides the image: the tower's
name, keyword arguments and levels, `token_grid`, the input mode and its
sizes, and the tower's weights themselves (a digest of every parameter and
batch statistic). In it, each image has one `.npz` (a float16 array per level,
[views, tokens, channels]) named by a hash of the file's path, size and
modification time, so an edited photo or a changed tower is never served
stale features. Entries are written to a unique temporary name, flushed and
renamed, so a killed build leaves only complete entries and resumes with the
rest; runs over different splits of the same photos (repeated splits) share a
folder. Every entry is checked when read (a readable `.npz` with the expected
levels, shapes and dtype, every value finite): a damaged one (a truncated or
empty file, a wrong shape, a NaN) is named in the log and computed again, so
it breaks neither this run nor a later one sharing the folder.

Several processes (`--num_processes`): each computes the missing entries of
its share of the images (record i belongs to process i mod P) on its own
devices, then waits for the others' entries to appear in the folder (which
every process must see: a shared workdir or `config.data.feature_cache_dir`)
and reads them all; a wait with no new entry for `WAIT_TIMEOUT_S` stops with
the process it waited for. Training and validation then run as in one
process, and give its metrics.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Sequence

import grain
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
from jax.sharding import Mesh

from bmqa_jax import log as log_lib
from bmqa_jax import sharding
from bmqa_jax.bmqa import cache_entry
from bmqa_jax.bmqa.cache_entry import DamagedEntry, read_entry  # noqa: F401
from bmqa_jax.data import pipeline

VERSION = 1


def _digest_tree(tree) -> str:
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    a = np.asarray(jax.device_get(leaf))
    h.update(jax.tree_util.keystr(path).encode())
    h.update(str((a.shape, a.dtype)).encode())
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()


def image_key(path: str) -> str:
  """An image file's identity: absolute path, size and modification time."""
  st = os.stat(path)
  ident = f"{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}"
  return hashlib.sha256(ident.encode()).hexdigest()[:24]


def num_views(pcfg: pipeline.PipelineConfig) -> tuple[int, int]:
  """(views cached per image, of which the first ones are the evaluation views)."""
  k = pcfg.eval_grid[0] * pcfg.eval_grid[1] if pcfg.mode == "native" else 1
  return (2 * k if pcfg.flip else k), k


def tower_key(cfg: mlc.ConfigDict, tower_variables: dict, pcfg: pipeline.PipelineConfig) -> str:
  """A hash of what the features depend on besides the image itself."""
  ic = cfg.model.image
  spec = dict(
    version=VERSION,
    tower=ic.name,
    kwargs=dict(ic.kwargs),
    levels=list(ic.get("levels", ())),
    token_grid=int(ic.get("token_grid", 0)),
    dtype=cfg.model.dtype,
    mode=pcfg.mode,
    image_size=pcfg.image_size,
    resize_size=pcfg.resize_size,
    native_crop=pcfg.native_crop,
    eval_grid=list(pcfg.eval_grid),
    flip=pcfg.flip,
    weights=_digest_tree(tower_variables),
  )
  scales = [int(x) for x in ic.get("scales", (1,))]
  if scales != [1]:  # the tower also reads the image downsampled (model.scales)
    spec["scales"] = scales
  if pcfg.prepare_short_side:  # resized before the views (data/prepared.py)
    spec["prepare_short_side"] = pcfg.prepare_short_side
  return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:20]


def cache_root(cfg: mlc.ConfigDict, workdir: str) -> str:
  """`config.data.feature_cache_dir`, or `workdir/feature_cache`."""
  return os.path.expanduser(
    cfg.data.get("feature_cache_dir", "") or os.path.join(workdir, "feature_cache")
  )


def _views(record: dict, pcfg: pipeline.PipelineConfig) -> np.ndarray:
  v = pipeline.eval_views(
    pipeline.record_image(record, pcfg.max_pixels)[0], pcfg, record.get("path", "<image>")
  )
  v = v if v.ndim == 4 else v[None]
  return np.concatenate([v, v[:, :, ::-1]]) if pcfg.flip else v


class FeatureCache:
  """The cached features of a list of records, in memory, in record order.

  `levels[l]` is [images, views, tokens, channels] (float16).
  """

  def __init__(self, folder: str, levels: Sequence[np.ndarray], num_eval_views: int):
    self.folder, self.num_eval_views = folder, num_eval_views
    self.levels = list(levels)
    self.num_views = self.levels[0].shape[1]

  def features(self, index: int, view: int) -> tuple[np.ndarray, ...]:
    return tuple(a[index, view] for a in self.levels)


def _local_mesh() -> Mesh:
  """This process's devices, all on `data`: the cache is built and read by
  each process on its own devices (no collective), so processes can work on
  different images at their own pace."""
  return Mesh(np.asarray(jax.local_devices()).reshape(-1, 1), ("data", "model"))


def _local_variables(variables: dict, mesh: Mesh) -> dict:
  """`variables` replicated on this process's devices (gathered from the other
  processes where a global array spans them)."""
  host = sharding.to_host({k: v for k, v in variables.items() if v})
  return jax.device_put(host, sharding.replicated(mesh))


def entry_shapes(model, variables: dict, pcfg: pipeline.PipelineConfig) -> list[tuple]:
  """[views, tokens, channels] of each level of an entry (abstract evaluation)."""
  n_views, _ = num_views(pcfg)
  size = pipeline.input_size(pcfg)
  outs = jax.eval_shape(
    lambda v, x: model.apply(v, x, method=model.tower_features),
    variables,
    jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32),
  )
  return [(n_views,) + tuple(o.shape[1:]) for o in outs]


# How long a process waits for another's share of the cache with no new entry
# appearing before it stops and names that process.
WAIT_TIMEOUT_S = 900.0


def build(
  model,
  variables: dict,
  records: Sequence[dict],
  cfg: mlc.ConfigDict,
  pcfg: pipeline.PipelineConfig,
  workdir: str,
  mesh,
  log=log_lib.info,
  wait_timeout_s: float | None = None,
) -> FeatureCache:
  """The features of `records` for the tower in `variables`; the images not yet
  in the cache are computed (a killed build resumes with the images done).

  Every entry is checked when read (`read_entry`); a damaged one is named in
  the log and computed again. With several processes, process p computes the
  missing entries of records p, p + P, p + 2P, ... (P processes) on its own
  devices, then waits for the others' (a shared folder; `wait_timeout_s`
  without a new entry, default `WAIT_TIMEOUT_S`, stops it with the name of the
  process it waited for) and reads them all. `mesh` is the run's mesh; the
  tower runs on this process's devices.
  """
  del mesh  # the tower runs on this process's devices (_local_mesh)
  n_proc, me = jax.process_count(), jax.process_index()
  local = _local_mesh()
  variables = _local_variables(variables, local)
  tower = {
    k: v["image_encoder"]
    for k, v in variables.items()
    if isinstance(v, dict) and "image_encoder" in v
  }
  folder = os.path.join(cache_root(cfg, workdir), tower_key(cfg, tower, pcfg))
  files = [os.path.join(folder, image_key(r["path"]) + ".npz") for r in records]
  shapes = entry_shapes(model, variables, pcfg)
  n_views, n_eval = num_views(pcfg)
  entries: list[list[np.ndarray] | None] = [None] * len(records)
  missing = []
  for i, f in enumerate(files):
    try:
      entries[i] = read_entry(f, shapes)
    except FileNotFoundError:
      missing.append(i)
    except DamagedEntry as e:
      log(f"feature cache: damaged entry {f} ({e}) of {records[i]['path']}: computing it again")
      missing.append(i)
  if not missing:
    log(f"reading the cached tower features of {len(records)} images from {folder}")
    return _assemble(folder, entries, n_eval)
  mine = [i for i in missing if i % n_proc == me]
  share = f" (this process's share: {len(mine)})" if n_proc > 1 else ""
  log(
    f"caching the frozen tower's features: {len(missing)} of {len(records)} images "
    f"× {n_views} views{share} → {folder}"
  )
  os.makedirs(folder, exist_ok=True)
  _compute(model, variables, records, files, mine, entries, cfg, pcfg, local)
  others = [i for i in missing if entries[i] is None]
  if others:
    _wait_for(
      others,
      files,
      shapes,
      entries,
      n_proc,
      WAIT_TIMEOUT_S if wait_timeout_s is None else wait_timeout_s,
      log,
    )
  return _assemble(folder, entries, n_eval)


def _assemble(folder, entries, n_eval) -> FeatureCache:
  return FeatureCache(
    folder, [np.stack([e[l] for e in entries]) for l in range(len(entries[0]))], n_eval
  )


def _compute(model, variables, records, files, todo, entries, cfg, pcfg, mesh) -> None:
  """Computes and writes the entries of records `todo` on `mesh` (local)."""
  if not todo:
    return
  n_views, _ = num_views(pcfg)
  bs = cfg.eval.batch_size
  sharding.check_batch(bs, mesh, "config.eval.batch_size")
  fn = jax.jit(lambda v, x: model.apply(v, x, method=model.tower_features))
  pending, owners, parts = [], [], {}

  def flush():
    x = np.stack(pending)
    n = len(x)
    if n < bs:
      x = np.concatenate([x, np.repeat(x[-1:], bs - n, 0)])
    outs = jax.device_get(fn(variables, sharding.put_batch({"x": x}, mesh)["x"]))
    for j, (i, v) in enumerate(owners):
      parts.setdefault(i, {})[v] = [np.asarray(o[j]) for o in outs]
      if len(parts[i]) == n_views:  # every view of image i: write its entry
        views = parts.pop(i)
        entry = [
          np.stack([views[k][l] for k in range(n_views)]).astype(cache_entry.DTYPE)
          for l in range(len(outs))
        ]
        cache_entry.write(files[i], entry)
        entries[i] = entry
    pending.clear()
    owners.clear()

  for i in todo:
    for v, view in enumerate(_views(records[i], pcfg)):
      pending.append(view)
      owners.append((i, v))
      if len(pending) == bs:
        flush()
  if pending:
    flush()


def _wait_for(todo, files, shapes, entries, n_proc, timeout_s, log) -> None:
  """Reads the entries `todo` as the other processes write them."""
  seen: dict[int, tuple] = {}
  last_progress = time.monotonic()
  todo = list(todo)
  log(f"feature cache: waiting for {len(todo)} entries of the other processes")
  while todo:
    left = []
    for i in todo:
      try:
        st = os.stat(files[i])
      except FileNotFoundError:
        left.append(i)
        continue
      sig = (st.st_ino, st.st_size, st.st_mtime_ns)
      if seen.get(i) == sig:  # damaged when last read and unchanged since
        left.append(i)
        continue
      try:
        entries[i] = read_entry(files[i], shapes)
      except (FileNotFoundError, DamagedEntry):
        seen[i] = sig
        left.append(i)
    if len(left) < len(todo):
      last_progress = time.monotonic()
    todo = left
    if todo and time.monotonic() - last_progress > timeout_s:
      i = todo[0]
      raise TimeoutError(
        f"feature cache: waited {timeout_s:.0f} s for process {i % n_proc} of "
        f"{n_proc} with no new entry; {len(todo)} entries are missing, e.g. "
        f"{files[i]}: is that process running, and is the cache folder shared "
        "by every process (config.data.feature_cache_dir)?"
      )
    if todo:
      time.sleep(0.2)


class _Source(grain.sources.RandomAccessDataSource):
  """Records with the index of their cached features."""

  def __init__(self, records: Sequence[dict]):
    self.records = records

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, i):
    return dict(self.records[i], cache_row=np.int32(i))


class _PickView(grain.transforms.RandomMap):
  def __init__(self, cache: FeatureCache):
    self.cache = cache

  def random_map(self, record: dict, rng: np.random.Generator) -> dict:
    out = {k: v for k, v in record.items() if k not in pipeline.IMAGE_FIELDS + ("cache_row",)}
    view = int(rng.integers(0, self.cache.num_views))
    for i, f in enumerate(self.cache.features(int(record["cache_row"]), view)):
      out[f"feat_{i}"] = f
    return out


def batch_features(batch: dict) -> list | None:
  """The cached features of a batch (`feat_0`, `feat_1`, ...) as float32, or None."""
  n = sum(1 for k in batch if k.startswith("feat_"))
  if not n:
    return None
  return [batch[f"feat_{i}"].astype(jnp.float32) for i in range(n)]


def train_loader(
  records: Sequence[dict],
  cache: FeatureCache,
  pcfg: pipeline.PipelineConfig,
  global_batch: int,
  seed: int,
  start_step: int = 0,
) -> grain.DataLoader:
  """`pipeline.train_loader` with a random cached view instead of pixels."""
  return pipeline.train_loader(
    _Source(records), pcfg, global_batch, seed, transform=_PickView(cache), start_step=start_step
  )


def predict(
  model,
  variables: dict,
  cache: FeatureCache,
  records: Sequence[dict],
  cfg: mlc.ConfigDict,
  mesh,
  has_text: bool,
) -> np.ndarray:
  """Scores of `records` from their cached evaluation views (mean over views).

  Every process computes every score on its own devices (the heads are small;
  each process holds the whole cache), so all processes return the same."""
  del mesh  # this process's devices (_local_mesh)
  mesh = _local_mesh()
  variables = _local_variables(variables, mesh)
  bs = cfg.eval.batch_size

  @jax.jit
  def score(variables, batch):
    return model.apply(
      variables,
      None,
      batch.get("text_ids"),
      batch.get("text_mask"),
      train=False,
      image_features=batch_features(batch),
    )["score"]

  out = np.zeros(len(records), np.float32)
  for v in range(cache.num_eval_views):
    for start in range(0, len(records), bs):
      idx = np.arange(start, min(start + bs, len(records)))
      pad = np.concatenate([idx, np.repeat(idx[-1:], bs - len(idx))])
      batch = {f"feat_{i}": np.asarray(a[pad, v]) for i, a in enumerate(cache.levels)}
      if has_text:
        for k in ("text_ids", "text_mask"):
          batch[k] = np.stack([records[i][k] for i in pad])
      scores = score(variables, sharding.put_batch(batch, mesh))
      out[idx] += np.asarray(jax.device_get(scores))[: len(idx)]
  return out / cache.num_eval_views
