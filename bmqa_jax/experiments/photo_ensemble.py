r"""Issue 29, more levers on the features of `photo_levers extract`: second-order
(covariance) pooling, other towers, and the heads + ridge probe ensemble with
the trainer's own ridge rule (`bmqa_jax.bmqa.ridge`), on the same 10 splits.

  python -m bmqa_jax.experiments.photo_levers extract --scale=1 --cov=16
  python -m bmqa_jax.experiments.photo_levers heads --variant=lite0:s1
  python -m bmqa_jax.experiments.photo_ensemble --heads=heads5_lite0:s1 \
      --variant=lite0:s1+s2+s4 --variant=lite0:s1+s2+s4,lite0:s1:cov --weights=0.3,0.5

Variants: those of `photo_levers.features`, joined by ','; a part
'TOWER:sS:cov' is each level's channel covariance (`extract --cov`).
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from bmqa_jax.experiments.photo_levers import (
  MANIFEST,
  TOWERS,
  _rows,
  arrays,
  features,
  ridge_scores,
  split_masks,
)


def lever_features(feats: str, spec: str) -> np.ndarray:
  """`features` plus second-order pooling: a part 'TOWER:s1:cov' (of a spec
  joined by ',') is each level's channel covariance after the projection of
  `extract --cov` (the upper triangle, [photos, K(K+1)/2] per level)."""
  cols = []
  for part in spec.split(","):
    bits = part.split(":")
    if bits[-1] != "cov":
      cols.append(features(feats, part))
      continue
    tower = TOWERS.get(bits[0], bits[0])
    covs = arrays(feats, tower, int(bits[1][1:]), kind="c")
    if not covs:
      raise ValueError(f"{part}: {tower} at that scale was extracted without --cov")
    cols += [c.astype(np.float64) for c in covs]
  return np.concatenate(cols, 1)


def loo_ridge_scores(x: np.ndarray, y: np.ndarray, lab: np.ndarray) -> np.ndarray:
  """The trainer's ridge probe (`bmqa_jax.bmqa.ridge.fit`: penalty by
  leave-one-out error on the train part, no val photo read) on every photo."""
  from bmqa_jax.bmqa import ridge  # pylint: disable=g-import-not-at-top

  tr = lab == "train"
  p, _ = ridge.fit(x[tr], y[tr])
  return ((x - p["mean"]) * p["inv_scale"]) @ p["coef"] + p["bias"]


def _paired(name: str, sr, ref, ref_name: str) -> str:
  sr, ref = np.asarray(sr), np.asarray(ref)
  d = sr - ref
  t = d.mean() / (d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 and d.std() > 0 else 0
  return (
    f"{name:58s} SRCC {sr.mean():.4f} ± {sr.std(ddof=1):.4f}  Δ vs {ref_name} "
    f"{d.mean():+.4f} ± {d.std(ddof=1):.4f} (t {t:+.1f}, {int((d > 0).sum())}/"
    f"{len(d)} better)"
  )


def ensemble(
  feats: str,
  heads: str,
  variants,
  manifest: str,
  seeds=range(10),
  weights=(0.5,),
  select: str = "both",
):
  """Ridge probes alone (penalty by val SRCC as `evaluate`, and/or by the
  trainer's leave-one-out rule) and mixed with saved heads predictions
  (`heads`): (1 − w) · heads + w · ridge for each weight. Every row paired
  against the first variant's ridge probe, and the mixes against the heads."""
  from scipy import stats  # pylint: disable=g-import-not-at-top

  rows = _rows(manifest)
  y = np.array([float(r["mos"]) for r in rows])
  xs = {v: lever_features(feats, v) for v in variants}
  rules = {"val": ridge_scores, "loo": loo_ridge_scores}
  rules = rules if select == "both" else {select: rules[select]}
  res: dict[str, list] = {}
  srcc = lambda p, te: stats.spearmanr(p[te], y[te])[0]
  for seed, lab in split_masks(manifest, seeds):
    te = lab == "test"
    f = os.path.join(feats, "preds", f"{heads}_{seed}.npy")
    h = np.load(f) if heads and os.path.exists(f) else None
    if h is not None:
      res.setdefault("heads", []).append(srcc(h, te))
    for v in variants:
      for rule, fn in rules.items():
        r = fn(xs[v], y, lab)
        res.setdefault(f"ridge[{rule}] {v}", []).append(srcc(r, te))
        for w in weights if h is not None else ():
          res.setdefault(f"heads+{w}·ridge[{rule}] {v}", []).append(srcc((1 - w) * h + w * r, te))
  ref = f"ridge[{next(iter(rules))}] {variants[0]}"
  for name, sr in res.items():
    if name.startswith("ridge"):
      print(_paired(name, sr, res[ref], "ref ridge"), flush=True)
  for name, sr in res.items():
    if name.startswith("heads+"):
      print(_paired(name, sr, res["heads"], "heads"), flush=True)
  if "heads" in res:
    print(
      f"{'heads ' + heads:58s} SRCC {np.mean(res['heads']):.4f} ± "
      f"{np.std(res['heads'], ddof=1):.4f} ({len(res['heads'])} splits)"
    )
  return res


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--feats", default="/tmp/photos/feats")
  p.add_argument("--heads", default="", help="saved heads predictions, e.g. heads5_lite0:s1")
  p.add_argument("--manifest", default=MANIFEST)
  p.add_argument("--variant", action="append", default=[])
  p.add_argument("--weights", default="0.5", help="ridge weights in the mix, comma-separated")
  p.add_argument(
    "--select", default="both", choices=("both", "val", "loo"), help="the ridge penalty rule(s)"
  )
  a = p.parse_args()
  ensemble(
    a.feats,
    a.heads,
    a.variant,
    a.manifest,
    weights=[float(w) for w in a.weights.split(",")],
    select=a.select,
  )


if __name__ == "__main__":
  main()
