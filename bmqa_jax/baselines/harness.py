"""Scores a manifest with the reference baselines and tabulates the IQA protocol.

``evaluate_manifest`` reads a manifest (docs/interfaces.md, Manifest), scores the rows of one
split with each requested baseline, and returns per-baseline metrics (raw and
logistic-mapped, overall and per device). Baseline keys:

* ``luminance``, ``niqe`` — training-free;
* ``brisque`` — BRISQUE features with an SVR fitted on the manifest's training
  split (hyperparameters by scene-grouped cross-validation on that split only);
* ``brisque_live`` — BRISQUE with a pretrained LIVE SVR (user files or an
  installed package's).

An image that cannot be read or scored is reported by name and left out of that
baseline's metrics; the others are still scored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tqdm

from bmqa_jax import log as log_lib
from bmqa_jax import metrics
from bmqa_jax import metrics_report
from bmqa_jax.baselines import brisque as brisque_lib
from bmqa_jax.baselines import create
from bmqa_jax.baselines import nss
from bmqa_jax.baselines import svr as svr_lib
from bmqa_jax.data import image_io
from bmqa_jax.data import manifest as manifest_lib

KEYS = ("luminance", "brisque", "brisque_live", "niqe")
DEFAULT_KEYS = ("luminance", "brisque", "niqe")
MAPPINGS = ("logistic4", "logistic5")


@dataclasses.dataclass(frozen=True)
class HarnessConfig:
  split: str = "test"
  train_split: str = "train"
  baselines: tuple[str, ...] = DEFAULT_KEYS
  niqe_pristine: str = "auto"
  brisque_model: str | None = None
  brisque_ranges: str | None = None
  svr_grid: svr_lib.SvrGrid = svr_lib.SvrGrid()
  progress: bool = True


# (what, image path) → (result or None, failure reason): an image is scored once
# per process, however many splits of the same photos are evaluated.
_MEMO: dict[tuple[str, str], tuple[Any, str]] = {}


def _score_all(
  fn: Callable[[np.ndarray], Any], samples: Sequence, desc: str, progress: bool, memo: str = ""
) -> tuple[list[Any], list[tuple[str, str]]]:
  """Applies ``fn`` to each sample's image; failures become (path, reason), result None.
  With ``memo`` (a name for ``fn``) results are remembered per image path."""
  out, failures = [], []
  for s in tqdm.tqdm(samples, desc=desc, disable=not progress, leave=False):
    key = (memo, s.image)
    if memo and key in _MEMO:
      value, reason = _MEMO[key]
    else:
      try:
        value, reason = fn(image_io.read_image(s.image)), ""
      except (image_io.ImageReadError, nss.DegenerateStatisticsError, ValueError) as e:
        value, reason = None, str(e)
      if memo:
        _MEMO[key] = (value, reason)
    out.append(value)
    if reason:
      failures.append((s.image, reason))
  return out, failures


def _metrics_block(scores: list[float | None], samples: Sequence) -> dict[str, Any]:
  ok = [i for i, v in enumerate(scores) if v is not None]
  pred = np.asarray([scores[i] for i in ok], dtype=np.float64)
  mos = np.asarray([samples[i].mos for i in ok])
  devices = [samples[i].device or "all" for i in ok]
  try:
    g = metrics.grouped_summary(pred, mos, devices, mapping=MAPPINGS)
  except ValueError as e:
    return {"overall": {"n": len(ok), "error": str(e)}, "per_device": {}}
  per_device = g["per_group"] if len(set(devices)) > 1 else {}
  return {"overall": g["overall"], "per_device": per_device}


def evaluate_manifest(
  manifest: str, config: HarnessConfig = HarnessConfig(), log: Callable[[str], None] = log_lib.info
) -> dict[str, Any]:
  unknown = [k for k in config.baselines if k not in KEYS]
  if unknown:
    raise ValueError(f"unknown baseline(s) {unknown}; known: {list(KEYS)}")
  all_samples = manifest_lib.load(manifest, require_mos=True, check_images=False, log=log)
  splits = sorted({s.split for s in all_samples})
  samples = [s for s in all_samples if s.split == config.split]
  if not samples:
    raise ValueError(f"{manifest}: no rows in split {config.split!r}; splits present: {splits}")
  result: dict[str, Any] = {
    "manifest": manifest,
    "split": config.split,
    "n_rows": len(samples),
    "baselines": {},
  }
  eval_features = None
  for key in config.baselines:
    info: dict[str, Any] = {}
    if key in ("brisque", "brisque_live"):
      if eval_features is None:
        eval_features, feat_fail = _score_all(
          brisque_lib.brisque_features,
          samples,
          f"BRISQUE features ({config.split})",
          config.progress,
          memo="brisque_features",
        )
      failures = list(feat_fail)
      if key == "brisque":
        model, info = _fit_brisque(all_samples, config, log)
      elif config.brisque_model:
        model = create("brisque", model=config.brisque_model, ranges=config.brisque_ranges)
      else:
        model = create("brisque")
      scores = [None if f is None else float(model.score_features(f)[0]) for f in eval_features]
    else:
      model = create(key, pristine=config.niqe_pristine) if key == "niqe" else create(key)
      scores, failures = _score_all(
        model.score, samples, key, config.progress, memo=f"{key}:{config.niqe_pristine}"
      )
    for path, reason in failures:
      log(f"{key}: skipped {path}: {reason}")
    result["baselines"][key] = {
      "description": model.description,
      "higher_is_better": model.higher_is_better,
      "score_range": list(model.score_range),
      "failures": [list(f) for f in failures],
      **info,
      **_metrics_block(scores, samples),
    }
  return result


def _fit_brisque(all_samples: Sequence, config: HarnessConfig, log) -> tuple[Any, dict]:
  train = [s for s in all_samples if s.split == config.train_split]
  if len(train) < 2 * config.svr_grid.folds:
    raise ValueError(
      f"fitting BRISQUE needs a training split {config.train_split!r} with at "
      f"least {2 * config.svr_grid.folds} rows; found {len(train)}"
    )
  feats, failures = _score_all(
    brisque_lib.brisque_features,
    train,
    f"BRISQUE features ({config.train_split})",
    config.progress,
    memo="brisque_features",
  )
  for path, reason in failures:
    log(f"brisque (training): skipped {path}: {reason}")
  ok = [i for i, f in enumerate(feats) if f is not None]
  x = np.stack([feats[i] for i in ok])
  y = [train[i].mos for i in ok]
  hp, cv_srcc = svr_lib.select_svr_hyperparameters(
    x, y, [train[i].scene for i in ok], config.svr_grid
  )
  log(
    f"brisque: SVR C={hp.c} gamma={hp.gamma} epsilon={hp.epsilon} "
    f"(cross-validated SRCC {cv_srcc:.4f} on {len(ok)} training images)"
  )
  model = brisque_lib.Brisque.fit(x, y, hparams=hp)
  return model, {"svr": dataclasses.asdict(hp), "svr_cv_srcc": cv_srcc, "n_train": len(ok)}


def format_result(result: dict[str, Any]) -> str:
  rows = []
  for key, r in result["baselines"].items():
    rows.append((key, r["overall"]))
    rows += [(f"{key}/{dev}", m) for dev, m in sorted(r["per_device"].items())]
  lines = [
    f"{result['manifest']} — split {result['split']!r} ({result['n_rows']} rows)",
    "",
    metrics_report.format_table(rows, MAPPINGS),
    "",
  ]
  for key, r in result["baselines"].items():
    lines.append(
      f"{key}: {r['description']}; score range {tuple(r['score_range'])}"
      + (f"; {len(r['failures'])} image(s) failed" if r["failures"] else "")
    )
  lines.append(
    "SRCC/KRCC and raw PLCC are signed: a lower-is-better score correlates "
    "negatively with MOS. L4/L5: after the 4-/5-parameter logistic mapping "
    "(n/c: fit did not converge)."
  )
  return "\n".join(lines)


def evaluate_repeated(
  workdir: str, config: HarnessConfig = HarnessConfig(), log: Callable[[str], None] = log_lib.info
) -> dict[str, Any]:
  """The baselines on every split of a `launch/repeated_splits.py` workdir.

  Each `split_<seed>/manifest.csv` is scored on its test split (BRISQUE's SVR
  refitted on its training split); features are computed once per image.
  Returns {"per_split": {seed: {baseline: overall}}, "statistics": {baseline:
  metrics_report.split_statistics}} and, when the workdir's own BMQA results exist,
  the same for "bmqa".
  """
  import glob  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top

  manifests = sorted(glob.glob(os.path.join(workdir, "split_*", "manifest.csv")))
  if not manifests:
    raise FileNotFoundError(
      f"{workdir}: no split_*/manifest.csv (run launch/repeated_splits.py first)"
    )
  cfg = dataclasses.replace(config, split="test", train_split="train")
  per_split: dict[str, dict[str, Any]] = {}
  for m in manifests:
    seed = os.path.basename(os.path.dirname(m))
    res = evaluate_manifest(m, cfg, log=log)
    per_split[seed] = {k: r["overall"] for k, r in res["baselines"].items()}
    log(
      f"[{seed}] "
      + ", ".join(f"{k} SRCC {v.get('srcc', float('nan')):.4f}" for k, v in per_split[seed].items())
    )
  names = list(next(iter(per_split.values())))
  stats = {
    k: metrics_report.split_statistics(
      [per_split[s][k] for s in per_split], ["plcc", "srcc", "krcc", "rmse"]
    )
    for k in names
  }
  own = os.path.join(workdir, "repeated_splits.json")
  if os.path.exists(own):
    with open(own) as f:
      stats = {"bmqa": json.load(f)["statistics"], **stats}
  return {
    "workdir": workdir,
    "num_splits": len(manifests),
    "per_split": per_split,
    "statistics": stats,
  }


def format_repeated(result: dict[str, Any]) -> str:
  """method | SRCC | PLCC | KRCC | RMSE, each mean ± std over the splits."""
  lines = [
    f"{result['num_splits']} random splits of {result['workdir']} (test split of each)",
    "",
    "| method | SRCC | PLCC | KRCC | RMSE |",
    "|---|---|---|---|---|",
  ]
  for name, st in result["statistics"].items():
    cells = []
    for k in ("srcc", "plcc", "krcc", "rmse"):
      v = st.get(k, {})
      cells.append("n/c" if v.get("mean") is None else f"{v['mean']:.4f} ± {v['std'] or 0.0:.4f}")
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  lines.append("")
  lines.append(
    "NIQE and BRISQUE-LIVE scores are lower-is-better: their correlations "
    "are negative when they rank well."
  )
  return "\n".join(lines)
