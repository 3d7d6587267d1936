"""Scene-wise random splits (Sec. 5.1.1) and their repetition over seeds.

The paper divides MLIQ 8:1:1 *by shooting scene*: the five captures of a scene
are always in the same split, so a model is never tested on a scene it saw in
training. :func:`scene_split` draws one such split from a seed;
:func:`write_split_manifest` writes a copy of a manifest with a fresh `split`
column; `launch/repeated_splits.py` trains and evaluates once per seed and
reports mean ± std and median over the seeds (`metrics.split_statistics`).
"""

from __future__ import annotations

import csv
import os
from typing import Iterable, Sequence

import numpy as np

from bmqa_jax.data import manifest as manifest_lib

SPLIT_NAMES = ("train", "val", "test")


def _scene_counts(n: int, fractions: Sequence[float]) -> tuple[int, int, int]:
  """Numbers of train/val/test scenes; each non-zero fraction gets ≥ 1 scene."""
  if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
    raise ValueError(f"fractions must be three non-negative numbers, got {fractions}")
  f = np.asarray(fractions, np.float64) / np.sum(fractions)
  n_val = int(round(f[1] * n))
  n_test = int(round(f[2] * n))
  if f[1] > 0:
    n_val = max(n_val, 1)
  if f[2] > 0:
    n_test = max(n_test, 1)
  n_train = n - n_val - n_test
  if n_train < (1 if f[0] > 0 else 0):
    raise ValueError(f"{n} scene(s) cannot be split {tuple(fractions)} with at least "
                     "one scene in every non-empty split")
  return n_train, n_val, n_test


def scene_split(scenes: Iterable[str], seed: int,
                fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> dict[str, str]:
  """{scene: 'train' | 'val' | 'test'}, a random scene-wise split.

  Deterministic in (set of scenes, seed): scenes are sorted before the
  permutation, so the order rows come in does not matter.
  """
  unique = sorted(set(scenes))
  if not unique:
    raise ValueError("no scenes to split")
  n_train, n_val, _ = _scene_counts(len(unique), fractions)
  perm = np.random.default_rng([seed, 0x5C3E]).permutation(len(unique))
  out = {}
  for rank, i in enumerate(perm):
    out[unique[i]] = ("train" if rank < n_train else
                      "val" if rank < n_train + n_val else "test")
  return out


def write_split_manifest(src: str, dst: str, seed: int,
                         fractions: Sequence[float] = (0.8, 0.1, 0.1),
                         assignment: dict[str, str] | None = None) -> dict[str, str]:
  """Copies the manifest `src` to `dst` (CSV) with a fresh scene-wise `split`.

  Image and audio paths are rewritten relative to `dst`'s folder so the copy can
  live anywhere. With `assignment` ({scene: split}, e.g. from the MOS manifest)
  that split is applied instead of a new one, and scenes it does not name go to
  'train' (used for the caption-pretraining manifest, so that PT never sees a
  test scene). Returns the {scene: split} applied.
  """
  rows, first = manifest_lib.read_rows(src)
  if not rows:
    raise manifest_lib.ManifestError(f"manifest {src!r} has no rows")
  if "scene" not in rows[0]:
    raise manifest_lib.ManifestError(f"manifest {src!r} has no `scene` column; a "
                                     "scene-wise split needs one")
  for i, r in enumerate(rows):
    if not str(r.get("scene") or "").strip():
      raise manifest_lib.ManifestError(f"{src}, row {i + first}: empty `scene`")
  if assignment is None:
    assign = scene_split((str(r["scene"]) for r in rows), seed, fractions)
  else:
    assign = {str(r["scene"]): assignment.get(str(r["scene"]), "train") for r in rows}
  src_dir = os.path.dirname(os.path.abspath(src))
  dst_dir = os.path.dirname(os.path.abspath(dst))
  os.makedirs(dst_dir, exist_ok=True)
  fields = list(rows[0]) + ([] if "split" in rows[0] else ["split"])
  out = []
  for r in rows:
    r = dict(r)
    for col in ("image", "audio"):
      v = str(r.get(col) or "").strip()
      if v and not os.path.isabs(v):
        r[col] = os.path.relpath(os.path.join(src_dir, v), dst_dir)
    r["split"] = assign[str(r["scene"])]
    out.append(r)
  tmp = dst + ".tmp"
  with open(tmp, "w", newline="", encoding="utf-8") as f:
    w = csv.DictWriter(f, fieldnames=fields)
    w.writeheader()
    w.writerows(out)
  os.replace(tmp, dst)
  return assign


def _split_config(cfg, manifest: str, pretrain: str, cache_dir: str):
  cfg = cfg.copy_and_resolve_references()
  # The splits re-cut the same photos: a frozen tower's features are shared.
  cfg.data.feature_cache_dir = cfg.data.get("feature_cache_dir", "") or cache_dir
  cfg.data.kind = "manifest"
  cfg.data.manifest = os.path.abspath(manifest)
  cfg.data.pretrain_manifest = os.path.abspath(pretrain) if pretrain else ""
  cfg.data.train_split, cfg.data.val_split, cfg.data.test_split = SPLIT_NAMES
  return cfg


def run_repeated(cfg, workdir: str, num_splits: int = 10, first_seed: int = 0,
                 fractions: Sequence[float] = (0.8, 0.1, 0.1), log=print) -> dict:
  """Trains and tests `cfg` on `num_splits` scene-wise random splits.

  Split k (seed `first_seed + k`) lives in `workdir/split_<seed>/`: its
  manifest (and pretraining manifest, with the same scenes held out), the
  training run (resumed when interrupted) and `eval/metrics.json` on the test
  split. A split whose metrics exist is not run again. Writes
  `workdir/repeated_splits.json` (per-split results and
  `metrics.split_statistics` of the overall metrics) and `repeated_splits.md`.
  """
  import json  # pylint: disable=g-import-not-at-top
  from bmqa_jax import evaluate  # pylint: disable=g-import-not-at-top
  from bmqa_jax import metrics  # pylint: disable=g-import-not-at-top
  from bmqa_jax import train  # pylint: disable=g-import-not-at-top
  from bmqa_jax.data import datasets  # pylint: disable=g-import-not-at-top
  if num_splits < 1:
    raise ValueError(f"num_splits must be ≥ 1, got {num_splits}")
  src, pre_src = datasets.manifest_paths(cfg, log)
  os.makedirs(workdir, exist_ok=True)
  per_split = {}
  for seed in range(first_seed, first_seed + num_splits):
    sdir = os.path.join(workdir, f"split_{seed:03d}")
    done = os.path.join(sdir, "eval", "metrics.json")
    if os.path.exists(done):
      log(f"[split {seed}] finished earlier, skipping")
    else:
      os.makedirs(sdir, exist_ok=True)
      man = os.path.join(sdir, "manifest.csv")
      assign = write_split_manifest(src, man, seed, fractions)
      pre = ""
      if pre_src and os.path.exists(pre_src):
        pre = os.path.join(sdir, "pretrain.csv")
        write_split_manifest(pre_src, pre, seed, fractions, assignment=assign)
      counts = {s: sum(v == s for v in assign.values()) for s in SPLIT_NAMES}
      log(f"[split {seed}] scenes per split: {counts}")
      scfg = _split_config(cfg, man, pre, os.path.join(workdir, "feature_cache"))
      train.train_and_evaluate(scfg, sdir, log=log)
      evaluate.evaluate_workdir(sdir, split="test", log=log)
    with open(done) as f:
      per_split[seed] = json.load(f)["overall"]
  results = list(per_split.values())
  # Metrics every split reports (older metrics.json files may lack the mapped ones).
  def number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)
  keys = [k for k in results[0]
          if all(k in r and (number(r[k]) or r[k] is None) for r in results)
          and any(number(r[k]) for r in results)]
  stats = metrics.split_statistics(results, keys)
  result = {"num_splits": num_splits, "seeds": list(per_split),
            "fractions": list(fractions), "per_split": per_split,
            "statistics": stats}
  with open(os.path.join(workdir, "repeated_splits.json.tmp"), "w") as f:
    json.dump(result, f, indent=1)
  os.replace(os.path.join(workdir, "repeated_splits.json.tmp"),
             os.path.join(workdir, "repeated_splits.json"))
  table = format_statistics(stats)
  with open(os.path.join(workdir, "repeated_splits.md"), "w") as f:
    f.write(f"# {num_splits} scene-wise random splits "
            f"({'/'.join(str(x) for x in fractions)})\n\n{table}\n")
  log(table)
  return result


def format_statistics(stats: dict, keys: Sequence[str] = (
    "plcc", "srcc", "krcc", "rmse", "plcc_logistic4", "rmse_logistic4")) -> str:
  """A markdown table: metric | mean ± std | median | min | max | splits."""
  lines = ["| metric | mean ± std | median | min | max | splits |",
           "|---|---|---|---|---|---|"]
  for k in keys:
    if k not in stats:
      continue
    s = stats[k]
    if s["mean"] is None:
      lines.append(f"| {k} | n/c | n/c | n/c | n/c | 0 |")
      continue
    std = "" if s["std"] is None else f" ± {s['std']:.4f}"
    lines.append(f"| {k} | {s['mean']:.4f}{std} | {s['median']:.4f} | "
                 f"{s['min']:.4f} | {s['max']:.4f} | {s['n_splits']} |")
  return "\n".join(lines)
