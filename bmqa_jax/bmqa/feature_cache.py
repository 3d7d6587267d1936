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
stale features. Entries are written to a temporary name and renamed, so a
killed build leaves only complete entries and resumes with the rest; runs
over different splits of the same photos (repeated splits) share a folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Sequence

import grain
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

from bmqa_jax import sharding
from bmqa_jax.data import pipeline

VERSION = 1
DTYPE = np.float16


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


def tower_key(cfg: mlc.ConfigDict, tower_variables: dict,
              pcfg: pipeline.PipelineConfig) -> str:
  """A hash of what the features depend on besides the image itself."""
  ic = cfg.model.image
  spec = dict(
      version=VERSION, tower=ic.name, kwargs=dict(ic.kwargs),
      levels=list(ic.get("levels", ())), token_grid=int(ic.get("token_grid", 0)),
      dtype=cfg.model.dtype, mode=pcfg.mode, image_size=pcfg.image_size,
      resize_size=pcfg.resize_size, native_crop=pcfg.native_crop,
      eval_grid=list(pcfg.eval_grid), flip=pcfg.flip,
      weights=_digest_tree(tower_variables))
  scales = [int(x) for x in ic.get("scales", (1,))]
  if scales != [1]:  # the tower also reads the image downsampled (model.scales)
    spec["scales"] = scales
  if pcfg.prepare_short_side:  # resized before the views (data/prepared.py)
    spec["prepare_short_side"] = pcfg.prepare_short_side
  return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:20]


def cache_root(cfg: mlc.ConfigDict, workdir: str) -> str:
  """`config.data.feature_cache_dir`, or `workdir/feature_cache`."""
  return os.path.expanduser(cfg.data.get("feature_cache_dir", "") or
                            os.path.join(workdir, "feature_cache"))


def _views(record: dict, pcfg: pipeline.PipelineConfig) -> np.ndarray:
  v = pipeline.eval_views(pipeline.record_image(record, pcfg.max_pixels)[0], pcfg)
  v = v if v.ndim == 4 else v[None]
  return np.concatenate([v, v[:, :, ::-1]]) if pcfg.flip else v


class FeatureCache:
  """The cached features of a list of records, in memory, in record order.

  `levels[l]` is [images, views, tokens, channels] (float16).
  """

  def __init__(self, folder: str, files: Sequence[str], num_eval_views: int):
    self.folder, self.num_eval_views = folder, num_eval_views
    entries = [np.load(f, allow_pickle=False) for f in files]
    n = len(entries[0].files)
    self.levels = [np.stack([e[f"level{i}"] for e in entries]) for i in range(n)]
    self.num_views = self.levels[0].shape[1]

  def features(self, index: int, view: int) -> tuple[np.ndarray, ...]:
    return tuple(a[index, view] for a in self.levels)


def _write_entry(path: str, outs: Sequence[np.ndarray]) -> None:
  tmp = f"{path}.tmp-{os.getpid()}.npz"
  np.savez(tmp, **{f"level{i}": o.astype(DTYPE) for i, o in enumerate(outs)})
  os.replace(tmp, path)


def build(model, variables: dict, records: Sequence[dict], cfg: mlc.ConfigDict,
          pcfg: pipeline.PipelineConfig, workdir: str, mesh, log=print) -> FeatureCache:
  """The features of `records` for the tower in `variables`; the images not yet
  in the cache are computed (a killed build resumes with the images done)."""
  tower = {k: v["image_encoder"] for k, v in variables.items()
           if isinstance(v, dict) and "image_encoder" in v}
  folder = os.path.join(cache_root(cfg, workdir), tower_key(cfg, tower, pcfg))
  files = [os.path.join(folder, image_key(r["path"]) + ".npz") for r in records]
  todo = [i for i, f in enumerate(files) if not os.path.exists(f)]
  n_views, n_eval = num_views(pcfg)
  if not todo:
    log(f"reading the cached tower features of {len(records)} images from {folder}")
    return FeatureCache(folder, files, n_eval)
  log(f"caching the frozen tower's features: {len(todo)} of {len(records)} images "
      f"× {n_views} views → {folder}")
  os.makedirs(folder, exist_ok=True)
  bs = cfg.eval.batch_size
  sharding.check_batch(bs, mesh, "config.eval.batch_size")
  variables = {k: v for k, v in variables.items() if v}
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
        _write_entry(files[i], [np.stack([views[k][l] for k in range(n_views)])
                                for l in range(len(outs))])
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
  return FeatureCache(folder, files, n_eval)


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
    out = {k: v for k, v in record.items()
           if k not in pipeline.IMAGE_FIELDS + ("cache_row",)}
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


def train_loader(records: Sequence[dict], cache: FeatureCache,
                 pcfg: pipeline.PipelineConfig, global_batch: int,
                 seed: int, start_step: int = 0) -> grain.DataLoader:
  """`pipeline.train_loader` with a random cached view instead of pixels."""
  return pipeline.train_loader(_Source(records), pcfg, global_batch, seed,
                               transform=_PickView(cache), start_step=start_step)


def predict(model, variables: dict, cache: FeatureCache, records: Sequence[dict],
            cfg: mlc.ConfigDict, mesh, has_text: bool) -> np.ndarray:
  """Scores of `records` from their cached evaluation views (mean over views)."""
  variables = {k: v for k, v in variables.items() if v}
  bs = cfg.eval.batch_size

  @jax.jit
  def score(variables, batch):
    return model.apply(variables, None, batch.get("text_ids"), batch.get("text_mask"),
                       train=False, image_features=batch_features(batch))["score"]

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
      out[idx] += np.asarray(jax.device_get(scores))[:len(idx)]
  return out / cache.num_eval_views
