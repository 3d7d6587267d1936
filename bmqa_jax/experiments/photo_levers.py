r"""Issue 29's lever study: frozen-tower features of the real dark photos, once,
and fast probes over the repeated splits' scene-wise splits.

The real recipe (`configs/biq2021.py`: five attentive-pooling heads, 20 epochs)
costs about a minute per split on 2 idle cores after the cache; comparing many
feature variants with it over 10 splits costs hours. This script instead
extracts, once per tower and scale, the per-cell moments of every level
(`extract`), and fits a ridge probe per split (`evaluate`) on the same splits
`launch/repeated_splits.py` draws (`bmqa_jax.data.scenes.scene_split`, seed k
for split k, fractions 0.8/0.1/0.1, the test split scored). Levers that win
here are then measured with the real recipe and `launch/repeated_splits.py`.

  python -m bmqa_jax.experiments.photo_levers extract --tower=efficientnet_lite0 \
      --levels=1,2,4,6 --scale=2 --out=/tmp/photos/feats
  python -m bmqa_jax.experiments.photo_levers evaluate --feats=/tmp/photos/feats \
      --variant=lite0:s1 --variant=lite0:s1+s2+s4

Scale s: the photo downsampled by s (mean of s×s pixel blocks, as
`config.model.image.scales` does) before the tower.
"""

from __future__ import annotations

import argparse
import csv
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

MANIFEST = "../shared/data/biq2021_lowlight/manifest.csv"
GRID = 4


def _rows(manifest: str):
  with open(manifest) as f:
    rows = list(csv.DictReader(f))
  base = os.path.dirname(os.path.abspath(manifest))
  return [dict(r, path=os.path.join(base, r["image"])) for r in rows]


def cell_moments(tokens, image_hw, grid: int = GRID):
  """[B, N, C] token map → [B, g², 3, C]: per-cell mean, std and skewness."""
  from bmqa_jax.models import align  # pylint: disable=g-import-not-at-top

  out = []
  for cell in align.grid_cells(tokens, image_hw, grid):
    m = cell.mean((1, 2))
    d = cell - m[:, None, None]
    var = (d * d).mean((1, 2))
    sd = jnp.sqrt(var + 1e-6)
    skew = (d**3).mean((1, 2)) / (sd**3)
    out.append(jnp.stack([m, sd, skew], 1))
  return jnp.stack(out, 1)


def channel_covariance(tokens, k: int, seed: int = 0):
  """[B, N, C] token map → [B, k(k+1)/2]: the upper triangle of the covariance
  of its tokens over the whole photo after a fixed random projection of the C
  channels to k (second-order pooling as in DBCNN's bilinear pooling, made
  small enough for a linear probe on 1,300 photos)."""
  c = tokens.shape[-1]
  proj = jax.random.normal(jax.random.key(seed), (c, k)) / np.sqrt(c)
  z = tokens @ proj
  z = z - z.mean(1, keepdims=True)
  cov = jnp.einsum("bni,bnj->bij", z, z) / z.shape[1]
  iu = np.triu_indices(k)
  return cov[:, iu[0], iu[1]]


def extract(tower: str, levels, scale: int, out: str, manifest: str, batch: int = 8, cov: int = 0):
  from bmqa_jax.data import image_io, native, pipeline  # pylint: disable=g-import-not-at-top
  from bmqa_jax.models import image  # pylint: disable=g-import-not-at-top
  from bmqa_jax.bmqa import model as model_lib  # pylint: disable=g-import-not-at-top
  from bmqa_jax.models.image import pretrained  # pylint: disable=g-import-not-at-top
  from bmqa_jax.train_lib import workdir as workdir_lib  # pylint: disable=g-import-not-at-top

  rows = _rows(manifest)
  name = f"{tower}_s{scale}.npz"
  os.makedirs(out, exist_ok=True)
  dest = os.path.join(out, name)
  if os.path.exists(dest):
    print(f"{dest} exists")
    return
  model = image.create(tower, levels=tuple(levels))
  variables = pretrained.imagenet_variables(tower)
  variables = jax.tree.map(jnp.asarray, variables)

  @jax.jit
  def fn(x):
    if scale > 1:
      x = model_lib.downsample(x, scale)
    o = model.apply(variables, x, train=False)
    moments = [cell_moments(m, x.shape[1:3]) for m in o["levels"]]
    return moments + ([channel_covariance(m, cov) for m in o["levels"]] if cov else [])

  parts_dir = dest + ".parts"
  os.makedirs(parts_dir, exist_ok=True)
  t0, done = time.time(), 0
  chunks = [list(range(s, min(s + batch, len(rows)))) for s in range(0, len(rows), batch)]
  for k, idx in enumerate(chunks):
    part = os.path.join(parts_dir, f"{k:05d}.npz")
    if os.path.exists(part):
      continue
    imgs = []
    for i in idx:
      img = image_io.read_image_uint8(rows[i]["path"])
      imgs.append(pipeline._normalise(native.grid_crops(img, 512, (1, 1)))[0])  # pylint: disable=protected-access
    n = len(imgs)
    imgs += [imgs[-1]] * (batch - n)
    outs = jax.device_get(fn(np.stack(imgs)))
    nl = len(levels)
    named = {f"{'lc'[j // nl]}{j % nl}": np.asarray(o[:n], np.float32) for j, o in enumerate(outs)}
    workdir_lib.atomic_write(part, lambda f, named=named: np.savez(f, **named))
    done += n
    if k % 20 == 0:
      print(
        f"{name}: {(k + 1) * batch}/{len(rows)} photos, "
        f"{(time.time() - t0) / max(done, 1):.3f} s/photo",
        flush=True,
      )
  parts = [np.load(os.path.join(parts_dir, f"{k:05d}.npz")) for k in range(len(chunks))]
  stacked = {f: np.concatenate([p[f] for p in parts]) for f in parts[0].files}
  np.savez(dest, images=np.array([r["image"] for r in rows]), **stacked)
  print(
    f"wrote {dest}: {[a.shape for a in stacked.values()]}, "
    f"{(time.time() - t0) / max(done, 1):.3f} s/photo this run"
  )


# --- evaluation ---------------------------------------------------------------


# A variant's short tower names (the rest are `image.create` names).
TOWERS = {
  "lite0": "efficientnet_lite0",
  "lite1": "efficientnet_lite1",
  "lite2": "efficientnet_lite2",
  "mnv2": "mobilenet_v2",
}


def arrays(feats: str, tower: str, scale: int, kind: str = "l") -> list[np.ndarray]:
  """The arrays `extract` wrote for `tower` at `scale`, level by level: kind
  'l' the cell moments, 'c' the channel covariances (`--cov`)."""
  z = np.load(os.path.join(feats, f"{tower}_s{scale}.npz"))
  return [
    z[k] for k in sorted((k for k in z.files if k.startswith(kind)), key=lambda k: int(k[1:]))
  ]


def _parse_spec(spec: str, last: str):
  """'TOWER:s1+s2[:stats[:LAST]]' → (tower, scales, indices of the stats in
  'msk', the fourth field or `last`): the one reading of a variant that
  `features` and `head_maps` share."""
  parts = spec.split(":")
  tower = TOWERS.get(parts[0], parts[0])
  scales = [int(s[1:]) for s in parts[1].split("+")]
  stats = parts[2] if len(parts) > 2 else "ms"
  return tower, scales, ["msk".index(s) for s in stats], parts[3] if len(parts) > 3 else last


def features(feats: str, spec: str) -> np.ndarray:
  """A variant → [photos, D]; several towers' variants joined by ',' are
  concatenated (e.g. 'lite0:s1+s2+s4,mnv2:s1'). One spec: 'TOWER:s1+s2[:stats][:cells]' where stats
  is a subset of 'msk' (mean, std, skewness; default 'ms') and cells is 'grid'
  (the 16 cells flattened) or 'pool' (averaged over cells, default) or 'both'."""
  if "," in spec:
    return np.concatenate([features(feats, s) for s in spec.split(",")], 1)
  tower, scales, pick, cells = _parse_spec(spec, "pool")
  cols = []
  for s in scales:
    for a in arrays(feats, tower, s):  # [P, cells, 3, C]
      a = a[:, :, pick]
      if cells in ("pool", "both"):
        cols.append(a.mean(1).reshape(len(a), -1))
      if cells in ("grid", "both"):
        cols.append(a.reshape(len(a), -1))
  return np.concatenate(cols, 1).astype(np.float64)


def split_masks(manifest: str, seeds):
  from bmqa_jax.data import scenes  # pylint: disable=g-import-not-at-top

  rows = _rows(manifest)
  sc = [r["scene"] for r in rows]
  for seed in seeds:
    assign = scenes.scene_split(sc, seed, (0.8, 0.1, 0.1))
    lab = np.array([assign[s] for s in sc])
    yield seed, lab


def ridge_scores(
  x: np.ndarray, y: np.ndarray, lab: np.ndarray, alphas=(1, 3, 10, 30, 100, 300, 1000, 3000)
) -> np.ndarray:
  """Ridge (dual form) on standardised features, fitted on the split's train
  part as the heads are; the penalty is chosen by SRCC on its val part."""
  tr, va = lab == "train", lab == "val"
  mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-8
  z = (x - mu) / sd
  z /= np.sqrt(z.shape[1])
  ym = y[tr].mean()
  primal = z.shape[1] <= tr.sum()
  k = z[tr].T @ z[tr] if primal else z[tr] @ z[tr].T
  w, v = np.linalg.eigh(k)
  vy = v.T @ (z[tr].T @ (y[tr] - ym) if primal else y[tr] - ym)
  best = None
  from scipy import stats  # pylint: disable=g-import-not-at-top

  for a in alphas:
    coef = v @ (vy / (w + a / 1000.0))
    pred = (z @ coef if primal else z @ (z[tr].T @ coef)) + ym
    r = stats.spearmanr(pred[va], y[va])[0]
    if best is None or r > best[0]:
      best = (r, pred)
  return best[1]


def evaluate(feats: str, variants, manifest: str, seeds=range(10)):
  from scipy import stats  # pylint: disable=g-import-not-at-top

  rows = _rows(manifest)
  y = np.array([float(r["mos"]) for r in rows])
  splits = list(split_masks(manifest, seeds))
  res = {}
  for spec in variants:
    x = features(feats, spec)
    sr, pl = [], []
    for _, lab in splits:
      p = ridge_scores(x, y, lab)
      te = lab == "test"
      sr.append(stats.spearmanr(p[te], y[te])[0])
      pl.append(stats.pearsonr(p[te], y[te])[0])
    res[spec] = (np.array(sr), np.array(pl))
    print(
      f"{spec:40s} D={x.shape[1]:6d}  SRCC {np.mean(sr):.4f} ± {np.std(sr, ddof=1):.4f}"
      f"  PLCC {np.mean(pl):.4f} ± {np.std(pl, ddof=1):.4f}",
      flush=True,
    )
  base = variants[0]
  for spec in variants[1:]:
    d = res[spec][0] - res[base][0]
    print(
      f"  {spec} − {base}: SRCC {d.mean():+.4f} ± {d.std(ddof=1):.4f} "
      f"(paired, {int((d > 0).sum())}/{len(d)} splits better)"
    )
  return res


def head_maps(feats: str, spec: str) -> list[np.ndarray]:
  """A variant → the maps the real heads read: per level [photos, 16, 2C·S]
  (cell mean and std, as `align.grid_statistics`, scales along channels, as
  `model.scales` does). spec: 'TOWER:s1+s2[:stats[:fusion]]', stats as in
  `features`; fusion 'chan' (default), 'tok' (the scales' cells as more tokens
  of one map, [photos, 16·S, 2C]) or 'sep' (one map per level and scale)."""
  tower, scales, pick, fusion = _parse_spec(spec, "chan")
  per_scale = [arrays(feats, tower, s) for s in scales]
  out = []
  for lev in zip(*per_scale):
    maps = [np.concatenate([a[:, :, j] for j in pick], -1).astype(np.float32) for a in lev]
    if fusion == "chan":
      out.append(np.concatenate(maps, -1))
    elif fusion == "tok":
      out.append(np.concatenate(maps, 1))
    else:
      out.extend(maps)
  return out


def head_scores(
  maps, y, lab, seed: int, ensemble: int = 5, epochs: int = 20, batch: int = 32, lr: float = 3e-4
) -> np.ndarray:
  """The default recipe's heads (`configs/biq2021.py`: `ensemble` attentive
  pooling + probe heads, AdamW, cosine after a 1-epoch warm-up, weight decay
  0.05, each member's MSE) trained on the split's train part from these maps
  (the unflipped view only); scores of every photo from the final weights."""
  import optax  # pylint: disable=g-import-not-at-top
  from bmqa_jax.bmqa import model as bmqa_model  # pylint: disable=g-import-not-at-top
  from bmqa_jax.configs import biq2021  # pylint: disable=g-import-not-at-top

  cfg = biq2021.get_config(f"ensemble={ensemble}")
  a = cfg.model.align
  model = bmqa_model.BMQA(
    None,
    None,
    modalities=("image",),
    align_width=a.width,
    align_heads=a.heads,
    align_qkv_dim=a.qkv_dim,
    align_mlp_dim=a.mlp_dim,
    multi_level=True,
    token_grid=4,
    ensemble=ensemble,
  )
  tr = np.flatnonzero(lab == "train")
  spe = len(tr) // batch
  total, warm = epochs * spe, spe
  sched = optax.join_schedules(
    [optax.linear_schedule(0.0, lr, warm), optax.cosine_decay_schedule(lr, total - warm)], [warm]
  )
  tx = optax.adamw(sched, b1=0.9, b2=0.999, weight_decay=0.05)
  params = model.init(
    jax.random.key(seed), None, image_features=[jnp.asarray(m[:2]) for m in maps]
  )["params"]
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, xs, yb):
    def loss(p):
      out = model.apply({"params": p}, None, image_features=xs)
      member = out["member_scores"] if ensemble > 1 else out["score"][:, None]
      return jnp.mean((member - yb[:, None]) ** 2)

    g = jax.grad(loss)(params)
    upd, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, upd), opt

  rng = np.random.default_rng(seed)
  for _ in range(epochs):
    perm = rng.permutation(tr)
    for k in range(spe):
      idx = perm[k * batch : (k + 1) * batch]
      params, opt = step(params, opt, [m[idx] for m in maps], y[idx].astype(np.float32))
  score = jax.jit(lambda p, xs: model.apply({"params": p}, None, image_features=xs)["score"])
  return np.concatenate(
    [np.asarray(score(params, [m[s : s + 256] for m in maps])) for s in range(0, len(y), 256)]
  )


def evaluate_heads(feats: str, variants, manifest: str, seeds=range(10), ensemble: int = 5):
  """The heads of every variant on split 0, then on split 1, ...: a killed run
  still leaves paired results (printed after every split)."""
  from scipy import stats  # pylint: disable=g-import-not-at-top

  rows = _rows(manifest)
  y = np.array([float(r["mos"]) for r in rows])
  maps = {spec: head_maps(feats, spec) for spec in variants}
  res = {spec: ([], []) for spec in variants}
  for seed, lab in split_masks(manifest, seeds):
    te = lab == "test"
    for spec in variants:
      t0 = time.time()
      p = head_scores(maps[spec], y, lab, seed, ensemble=ensemble)
      os.makedirs(os.path.join(feats, "preds"), exist_ok=True)
      np.save(os.path.join(feats, "preds", f"heads{ensemble}_{spec}_{seed}.npy"), p)
      res[spec][0].append(stats.spearmanr(p[te], y[te])[0])
      res[spec][1].append(stats.pearsonr(p[te], y[te])[0])
      print(
        f"  split {seed} {spec}: SRCC {res[spec][0][-1]:.4f} PLCC "
        f"{res[spec][1][-1]:.4f} ({time.time() - t0:.0f} s)",
        flush=True,
      )
    for spec in variants:
      sr, pl = np.array(res[spec][0]), np.array(res[spec][1])
      line = (
        f"heads×{ensemble} {spec:30s} {len(sr)} splits: SRCC {sr.mean():.4f} ± "
        f"{sr.std(ddof=1) if len(sr) > 1 else 0:.4f}  PLCC {pl.mean():.4f} ± "
        f"{pl.std(ddof=1) if len(pl) > 1 else 0:.4f}"
      )
      if spec != variants[0]:
        d = sr - np.array(res[variants[0]][0])
        line += (
          f"  paired ΔSRCC {d.mean():+.4f} ± {d.std(ddof=1) if len(d) > 1 else 0:.4f}"
          f" ({int((d > 0).sum())}/{len(d)} better)"
        )
      print(line, flush=True)
  return res


def combine(feats: str, heads: str, variants, manifest: str, seeds=range(10)):
  """The mean of saved heads predictions (`heads`, e.g. 'heads5_lite0:s1') and
  a ridge probe's on each variant's features, on the splits whose heads
  predictions exist; paired against the heads alone."""
  from scipy import stats  # pylint: disable=g-import-not-at-top

  rows = _rows(manifest)
  y = np.array([float(r["mos"]) for r in rows])
  xs = {v: features(feats, v) for v in variants}
  base, res = [], {v: [] for v in variants}
  for seed, lab in split_masks(manifest, seeds):
    f = os.path.join(feats, "preds", f"{heads}_{seed}.npy")
    if not os.path.exists(f):
      continue
    te = lab == "test"
    h = np.load(f)
    base.append(stats.spearmanr(h[te], y[te])[0])
    for v in variants:
      p = 0.5 * (h + ridge_scores(xs[v], y, lab))
      res[v].append(stats.spearmanr(p[te], y[te])[0])
  base = np.array(base)
  print(f"{heads}: {len(base)} splits, SRCC {base.mean():.4f} ± {base.std(ddof=1):.4f}")
  for v in variants:
    r = np.array(res[v])
    d = r - base
    print(
      f"  + ridge {v}: SRCC {r.mean():.4f} ± {r.std(ddof=1):.4f}, paired "
      f"{d.mean():+.4f} ± {d.std(ddof=1):.4f} ({int((d > 0).sum())}/{len(d)} better)"
    )


def main():
  p = argparse.ArgumentParser()
  p.add_argument("cmd", choices=("extract", "evaluate", "heads", "combine"))
  p.add_argument("--heads", default="heads5_lite0:s1", help="combine: saved predictions")
  p.add_argument("--tower", default="efficientnet_lite0")
  p.add_argument("--levels", default="1,2,4,6")
  p.add_argument("--scale", type=int, default=1)
  p.add_argument(
    "--cov",
    type=int,
    default=0,
    help="extract: also each level's channel covariance after a projection to COV",
  )
  p.add_argument("--out", "--feats", dest="out", default="/tmp/photos/feats")
  p.add_argument("--manifest", default=MANIFEST)
  p.add_argument("--variant", action="append", default=[])
  p.add_argument("--ensemble", type=int, default=5, help="heads: heads averaged")
  p.add_argument("--seeds", default="0-9", help="splits, FIRST-LAST")
  a = p.parse_args()
  if a.cmd == "extract":
    extract(a.tower, [int(x) for x in a.levels.split(",")], a.scale, a.out, a.manifest, cov=a.cov)
  elif a.cmd == "combine":
    combine(a.out, a.heads, a.variant, a.manifest)
  elif a.cmd == "heads":
    lo, hi = (int(x) for x in a.seeds.split("-"))
    evaluate_heads(a.out, a.variant, a.manifest, seeds=range(lo, hi + 1), ensemble=a.ensemble)
  else:
    evaluate(a.out, a.variant, a.manifest)


if __name__ == "__main__":
  main()
