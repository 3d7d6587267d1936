"""The lever study's helpers (bmqa_jax/experiments/photo_levers.py and
photo_ensemble.py) on synthetic features: second-order pooling and the
heads + ridge mix over scene-wise splits."""

import csv
import os

import jax
import numpy as np

from bmqa_jax.experiments import photo_ensemble
from bmqa_jax.experiments import photo_levers


def test_channel_covariance_is_the_projected_tokens_covariance():
  x = np.asarray(jax.random.normal(jax.random.key(0), (2, 50, 12)))
  got = np.asarray(photo_levers.channel_covariance(x, 4, seed=3))
  proj = np.asarray(jax.random.normal(jax.random.key(3), (12, 4))) / np.sqrt(12)
  for b in range(2):
    z = x[b] @ proj
    want = np.cov(z.T, bias=True)[np.triu_indices(4)]
    np.testing.assert_allclose(got[b], want, rtol=1e-4, atol=1e-5)


def test_ensemble_mixes_saved_heads_with_ridge_probes(tmp_path):
  rng = np.random.default_rng(0)
  n = 80
  man = os.path.join(tmp_path, "manifest.csv")
  with open(man, "w", newline="") as f:
    w = csv.DictWriter(f, ["image", "mos", "scene", "split"])
    w.writeheader()
    mos = rng.uniform(0, 1, n)
    for i in range(n):
      w.writerow(dict(image=f"{i}.jpg", mos=mos[i], scene=f"s{i}", split="train"))
  feats = str(tmp_path)
  # Level 0 tracks the MOS; the covariance part is noise.
  l0 = np.zeros((n, 16, 3, 4), np.float32)
  l0[:, :, 0, 0] = mos[:, None] + 0.05 * rng.normal(size=(n, 16))
  l0[:, :, 0, 1:] = rng.normal(size=(n, 16, 3))
  np.savez(
    os.path.join(feats, "efficientnet_lite0_s1.npz"),
    l0=l0,
    c0=rng.normal(size=(n, 10)).astype(np.float32),
  )
  os.makedirs(os.path.join(feats, "preds"))
  for seed in range(3):
    np.save(os.path.join(feats, "preds", f"heads5_x_{seed}.npy"), mos + 0.3 * rng.normal(size=n))
  res = photo_ensemble.ensemble(
    feats, "heads5_x", ["lite0:s1", "lite0:s1,lite0:s1:cov"], man, seeds=range(3), weights=(0.5,)
  )
  assert len(res["heads"]) == 3
  assert np.mean(res["ridge[loo] lite0:s1"]) > 0.9  # the probe reads level 0
  assert np.mean(res["heads+0.5·ridge[loo] lite0:s1"]) > np.mean(res["heads"])
  x = photo_ensemble.lever_features(feats, "lite0:s1,lite0:s1:cov")
  assert x.shape == (n, 2 * 4 + 10)


def test_extract_writes_each_levels_moments_and_covariances(tmp_path):
  """`extract` on three small photos (Lite0's ImageNet weights, at ½ scale, in
  batches of 2): per level, the cell moments [photos, cells, 3, C] and the
  covariances, finite; its parts are kept for a killed run to resume."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  man = os.path.join(tmp_path, "manifest.csv")
  with open(man, "w", newline="") as f:
    w = csv.DictWriter(f, ["image", "mos", "scene", "split"])
    w.writeheader()
    for i in range(3):
      Image.fromarray(rng.integers(0, 60, (96, 128, 3), dtype=np.uint8)).save(
        os.path.join(tmp_path, f"{i}.png")
      )
      w.writerow(dict(image=f"{i}.png", mos=0.5, scene=f"s{i}", split="train"))
  out = str(tmp_path / "feats")
  photo_levers.extract("efficientnet_lite0", (1, 2), 2, out, man, batch=2, cov=4)
  moments = photo_levers.arrays(out, "efficientnet_lite0", 2)
  covs = photo_levers.arrays(out, "efficientnet_lite0", 2, kind="c")
  assert [m.shape[:3] for m in moments] == [(3, photo_levers.GRID**2, 3)] * 2
  assert [c.shape for c in covs] == [(3, 10)] * 2
  assert all(np.isfinite(a).all() for a in moments + covs)
  parts = sorted(os.listdir(os.path.join(out, "efficientnet_lite0_s2.npz.parts")))
  assert parts == ["00000.npz", "00001.npz"]
