"""Repetition of a run over scene-wise random splits (Sec. 5.1.1).

`launch/repeated_splits.py` trains and evaluates once per seed
(`bmqa_jax.data.scenes.write_split_manifest`) and reports mean ± std and median
over the seeds (`metrics_report.split_statistics`).
"""

from __future__ import annotations

import json
import os
from typing import Sequence

from bmqa_jax import config_bases
from bmqa_jax import log as log_lib
from bmqa_jax import metrics_report
from bmqa_jax.bmqa import evaluate
from bmqa_jax.bmqa import train
from bmqa_jax.data import datasets
from bmqa_jax.data import scenes
from bmqa_jax.experiments import descriptions
from bmqa_jax.experiments import report
from bmqa_jax.train_lib import workdir as workdir_lib
from bmqa_jax.data.scenes import SPLIT_NAMES


def _split_config(cfg, manifest: str, pretrain: str, cache_dir: str):
  cfg = cfg.copy_and_resolve_references()
  # The splits re-cut the same photos: a frozen tower's features are shared.
  cfg.data.feature_cache_dir = cfg.data.get("feature_cache_dir", "") or cache_dir
  cfg.data.kind = "manifest"
  cfg.data.manifest = os.path.abspath(manifest)
  cfg.data.pretrain_manifest = os.path.abspath(pretrain) if pretrain else ""
  cfg.data.train_split, cfg.data.val_split, cfg.data.test_split = SPLIT_NAMES
  return cfg


def _config_changed(cfg, sdir: str) -> bool:
  """Whether the split's workdir was trained with another config than `cfg` would
  give it now (ignoring the fields a run may change safely)."""
  man = os.path.join(sdir, "manifest.csv")
  pre = os.path.join(sdir, "pretrain.csv")
  scfg = _split_config(
    cfg,
    man,
    pre if os.path.exists(pre) else "",
    os.path.join(os.path.dirname(sdir), "feature_cache"),
  )
  changes = workdir_lib.config_changes(workdir_lib.load_config(sdir), scfg, config_bases.complete)
  return any(not workdir_lib.safe_change(k) for k, _, _ in changes)


def run_repeated(
  cfg,
  workdir: str,
  num_splits: int = 10,
  first_seed: int = 0,
  fractions: Sequence[float] = (0.8, 0.1, 0.1),
  log=log_lib.info,
) -> dict:
  """Trains and tests `cfg` on `num_splits` scene-wise random splits.

  Split k (seed `first_seed + k`) lives in `workdir/split_<seed>/`: its
  manifest (and pretraining manifest, with the same scenes held out), the
  training run (resumed when interrupted) and `eval/metrics.json` on the test
  split. A split whose metrics exist is not run again. Writes
  `workdir/repeated_splits.json` (per-split results and
  `metrics_report.split_statistics` of the overall metrics) and `repeated_splits.md`.
  """
  if num_splits < 1:
    raise ValueError(f"num_splits must be ≥ 1, got {num_splits}")
  src, pre_src = datasets.manifest_paths(cfg, log)
  os.makedirs(workdir, exist_ok=True)
  per_split = {}
  for seed in range(first_seed, first_seed + num_splits):
    sdir = os.path.join(workdir, f"split_{seed:03d}")
    overall, status = (
      report.own_test_metrics(sdir)
      if os.path.exists(os.path.join(sdir, "config.json"))
      else (None, "not started")
    )
    if overall is not None and not _config_changed(cfg, sdir):
      log(f"[split {seed}] finished earlier, skipping")
    else:
      if status != "not started":
        log(f"[split {seed}] {status}: training (resumes) and evaluating again")
      os.makedirs(sdir, exist_ok=True)
      man = os.path.join(sdir, "manifest.csv")
      assign = scenes.write_split_manifest(src, man, seed, fractions)
      pre = ""
      if pre_src and os.path.exists(pre_src):
        pre = os.path.join(sdir, "pretrain.csv")
        scenes.write_split_manifest(pre_src, pre, seed, fractions, assignment=assign)
      counts = {s: sum(v == s for v in assign.values()) for s in SPLIT_NAMES}
      log(f"[split {seed}] scenes per split: {counts}")
      scfg = _split_config(cfg, man, pre, os.path.join(workdir, "feature_cache"))
      describe = descriptions.for_training(scfg, sdir, log)
      train.train_and_evaluate(scfg, sdir, log=log, describe=describe, progress=True)
      evaluate.evaluate_workdir(
        sdir,
        split="test",
        log=log,
        text_source=scfg.data.get("text_source", "text"),
        describe=describe,
      )
      overall, status = report.own_test_metrics(sdir)
      if overall is None:
        raise RuntimeError(f"[split {seed}] {status}")
    per_split[seed] = overall
  results = list(per_split.values())

  # Metrics every split reports (older metrics.json files may lack the mapped ones).
  def number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)

  keys = [
    k
    for k in results[0]
    if all(k in r and (number(r[k]) or r[k] is None) for r in results)
    and any(number(r[k]) for r in results)
  ]
  stats = metrics_report.split_statistics(results, keys)
  result = {
    "num_splits": num_splits,
    "seeds": list(per_split),
    "fractions": list(fractions),
    "per_split": per_split,
    "statistics": stats,
  }
  workdir_lib.atomic_write(
    os.path.join(workdir, "repeated_splits.json"), json.dumps(result, indent=1)
  )
  table = format_statistics(stats)
  with open(os.path.join(workdir, "repeated_splits.md"), "w") as f:
    f.write(
      f"# {num_splits} scene-wise random splits "
      f"({'/'.join(str(x) for x in fractions)})\n\n{table}\n"
    )
  log(table)
  return result


def format_statistics(
  stats: dict,
  keys: Sequence[str] = ("plcc", "srcc", "krcc", "rmse", "plcc_logistic4", "rmse_logistic4"),
) -> str:
  """A markdown table: metric | mean ± std | median | min | max | splits."""
  lines = ["| metric | mean ± std | median | min | max | splits |", "|---|---|---|---|---|---|"]
  for k in keys:
    if k not in stats:
      continue
    s = stats[k]
    if s["mean"] is None:
      lines.append(f"| {k} | n/c | n/c | n/c | n/c | 0 |")
      continue
    std = "" if s["std"] is None else f" ± {s['std']:.4f}"
    lines.append(
      f"| {k} | {s['mean']:.4f}{std} | {s['median']:.4f} | "
      f"{s['min']:.4f} | {s['max']:.4f} | {s['n_splits']} |"
    )
  return "\n".join(lines)
