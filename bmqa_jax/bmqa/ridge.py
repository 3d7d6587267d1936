"""A closed-form ridge probe beside the attentive heads (`config.model.ridge_*`).

On the real dark photos the attentive heads read the native-scale cell
statistics well but do not use what the photo shows at ½ and ¼ scale (given
those scales' statistics they score lower), while a linear probe on the
cell-averaged statistics of all the scales gains from them
(docs/real_photos.md, "Levers past 0.90"). The two err differently: their mean
ranks the photos better than either.

The probe reads the frozen tower's features (`BMQA.tower_features`, every
scale) averaged over the cells (or tokens) of each level, standardised by the
training split's mean and scale. It is fitted once, in closed form, on the
cached features of the training split's evaluation views before the heads
train (`fit`; the penalty is chosen by leave-one-out squared error on the
training split, so no validation or test photo is read), stored in the
model's parameters (`ridge/...`, frozen for the optimiser: `stage.stage_labels`)
and so saved, restored and shipped with the heads. The model's score is
`(1 - weight) · heads + weight · ridge`; the heads' own loss never sees it.

Two probes (`config.model.ridge_kernel`):

* 'linear' (`RidgeProbe`, `fit`): linear ridge regression on the cell-averaged
  statistics (the previous default);
* 'rbf' (`KernelRidgeProbe`, `fit_kernel`): kernel ridge regression with a
  Gaussian kernel on the cell-averaged statistics plus how the cells' means
  spread over the photo (their standard deviation over the cells), after a
  projection on the training features' `dims` leading principal axes. On the
  10 scene-wise splits of the real dark photos it ranks better than the linear
  probe alone (+0.011 SRCC) and in the mix (+0.007; docs/real_photos.md,
  "A kernel probe"). It keeps its training photos' projected features as support
  points (`support` rows, zero-padded: the parameter shapes do not depend on
  the training set's size).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

# Penalties tried (on features standardised and divided by √D, as the lever
# study did): the one with the least leave-one-out squared error wins.
ALPHAS = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0)


KERNELS = ("linear", "rbf")

# Penalties of the kernel probe (its kernel matrix has 1 on the diagonal).
KERNEL_ALPHAS = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)


def pooled(maps: Sequence) -> jnp.ndarray:
  """[B, N_l, C_l] maps → [B, ΣC_l]: each level averaged over its cells."""
  return jnp.concatenate([m.astype(jnp.float32).mean(1) for m in maps], -1)


def spread(maps: Sequence, num_scales: int) -> jnp.ndarray:
  """`pooled`, then each level's spread of its cell means over the photo.

  A map [B, N, S·2C] holds, per scale, the cells' means (C) then standard
  deviations (C) (`align.grid_statistics`, `BMQA.tower_features`); this adds
  the standard deviation over the N cells of each scale's means: [B, ΣC_l·(2S + S)]
  (whether the photo is dark or noisy everywhere or in part).
  """
  out = [pooled(maps)]
  for m in maps:
    b, n, c = m.shape
    means = m.astype(jnp.float32).reshape(b, n, num_scales, 2, c // (2 * num_scales))[:, :, :, 0]
    out.append(means.std(1).reshape(b, -1))
  return jnp.concatenate(out, -1)


def features(maps: Sequence, kernel: str, num_scales: int) -> jnp.ndarray:
  """What the probe of `kernel` reads of the tower's maps."""
  return pooled(maps) if kernel == "linear" else spread(maps, num_scales)


class RidgeProbe(nn.Module):
  """score = ((x − mean) · inv_scale) · coef + bias on the pooled features.

  Initialised to a constant 0 (coef 0): an unfitted probe adds nothing but
  its weight's share of 0 to the score, and `fit` replaces every parameter."""

  @nn.compact
  def __call__(self, maps):
    x = pooled(maps)
    d = x.shape[-1]
    mean = self.param("mean", nn.initializers.zeros, (d,))
    inv_scale = self.param("inv_scale", nn.initializers.ones, (d,))
    coef = self.param("coef", nn.initializers.zeros, (d,))
    bias = self.param("bias", nn.initializers.zeros, ())
    return ((x - mean) * inv_scale) @ coef + bias


class KernelRidgeProbe(nn.Module):
  """score = Σ_i dual_i · exp(−gamma · |u − support_i|²) + bias, where
  u = ((x − mean) · inv_scale) · proj is the photo's projection on the
  training features' leading principal axes (`fit_kernel`). An unfitted probe
  (dual 0) scores 0."""

  num_scales: int
  support: int
  dims: int

  @nn.compact
  def __call__(self, maps):
    x = spread(maps, self.num_scales)
    d = x.shape[-1]
    mean = self.param("mean", nn.initializers.zeros, (d,))
    inv_scale = self.param("inv_scale", nn.initializers.ones, (d,))
    proj = self.param("proj", nn.initializers.zeros, (d, self.dims))
    support = self.param("support", nn.initializers.zeros, (self.support, self.dims))
    dual = self.param("dual", nn.initializers.zeros, (self.support,))
    gamma = self.param("gamma", nn.initializers.zeros, ())
    bias = self.param("bias", nn.initializers.zeros, ())
    u = ((x - mean) * inv_scale) @ proj.astype(jnp.float32)
    s = support.astype(jnp.float32)
    d2 = (u * u).sum(-1)[:, None] + (s * s).sum(-1)[None] - 2.0 * u @ s.T
    return jnp.exp(-gamma * jnp.maximum(d2, 0.0)) @ dual.astype(jnp.float32) + bias


def _check(x: np.ndarray, y: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if x.ndim != 2 or len(x) != len(y) or len(y) < 3:
    raise ValueError(f"{what}: need [n, D] features and n ≥ 3 targets, got {x.shape} and {y.shape}")
  if not (np.isfinite(x).all() and np.isfinite(y).all()):
    raise ValueError(f"{what}: non-finite features or targets")
  return x, y


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(mean, inv_scale, z). A feature constant over the training photos (a
  channel that never fires) carries nothing: scale 0, so an unseen value
  cannot move the score and no huge scale overflows in float16."""
  mean, sd = x.mean(0), x.std(0)
  live = sd > 1e-6 * max(float(sd.max()), 1e-30)
  inv_scale = np.where(live, 1.0 / np.where(live, sd, 1.0), 0.0)
  return mean, inv_scale, (x - mean) * inv_scale


def _loo_penalty(w, v, y, alphas) -> tuple[float, float]:
  """(penalty, leave-one-out RMSE) of ridge regression on the eigenpairs
  (w, v) of a kernel or Gram matrix, for the penalty with the least error.

  The fit is mean(y) + H (y − mean(y)) with H = K (K + a)⁻¹, a linear
  smoother S = 11ᵀ/n + H (I − 11ᵀ/n), so the leave-one-out residual is
  (y − S y)_i / (1 − S_ii) in closed form (the refit without photo i takes
  the mean of the others, tests/test_ridge.py checks it against refits).
  """
  n = len(y)
  vy, v1 = v.T @ y, v.T @ np.ones(n)
  best = None
  for a in alphas:
    shrink = w / (w + a)
    s_ii = 1.0 / n + (v * v) @ shrink - (v @ (shrink * v1)) / n
    loo = (y - v @ (shrink * vy)) / np.maximum(1.0 - s_ii, 1e-6)
    err = float(np.sqrt(np.mean(loo**2)))
    if best is None or err < best[1]:
      best = (a, err)
  return best


def fit_kernel(
  x: np.ndarray,
  y: np.ndarray,
  support: int,
  dims: int,
  alphas: Sequence[float] = KERNEL_ALPHAS,
) -> tuple[dict, dict]:
  """Kernel ridge regression of `y` [n] on `x` [n, D] (`spread` features).

  The features are standardised, projected on their `dims` leading principal
  axes (SVD of the training features), and compared by a Gaussian kernel
  whose width is the median squared distance between training photos; the
  penalty is chosen by leave-one-out error. Returns (the `KernelRidgeProbe`
  parameters, info: `alpha`, `loo_rmse`, `dims` kept).
  """
  x, y = _check(x, y, "kernel ridge fit")
  if len(x) > support:
    raise ValueError(
      f"kernel ridge fit: {len(x)} training images, more than the probe's "
      f"{support} support points: raise config.model.ridge_support"
    )
  mean, inv_scale, z = _standardise(x)
  _, sv, vt = np.linalg.svd(z, full_matrices=False)
  k = int(min(dims, (sv > 1e-9 * sv[0]).sum()))
  proj = np.zeros((x.shape[1], dims))
  proj[:, :k] = vt[:k].T
  u = z @ proj
  sq = (u * u).sum(1)
  d2 = np.maximum(sq[:, None] + sq[None] - 2.0 * u @ u.T, 0.0)
  gamma = 1.0 / max(float(np.median(d2[np.triu_indices(len(u), 1)])), 1e-12)
  kmat = np.exp(-gamma * d2)
  ym = y.mean()
  w, v = np.linalg.eigh(kmat)
  w = np.maximum(w, 0.0)
  a, err = _loo_penalty(w, v, y - ym, alphas)
  dual = np.zeros(support)
  dual[: len(y)] = v @ ((v.T @ (y - ym)) / (w + a))
  pad = np.zeros((support, dims))
  pad[: len(u)] = u
  params = dict(
    mean=mean.astype(np.float32),
    inv_scale=inv_scale.astype(np.float32),
    proj=proj.astype(np.float32),
    support=pad.astype(np.float32),
    dual=dual.astype(np.float32),
    gamma=np.float32(gamma),
    bias=np.float32(ym),
  )
  return params, dict(alpha=a, loo_rmse=err, dims=k)


def fit(x: np.ndarray, y: np.ndarray, alphas: Sequence[float] = ALPHAS) -> tuple[dict, dict]:
  """Ridge regression of `y` [n] on `x` [n, D] (float64, dual form).

  Returns (the `RidgeProbe` parameters, info: the chosen `alpha` and its
  leave-one-out RMSE). The features are standardised and divided by √D so
  that one penalty grid suits any width; the intercept is the mean of y.
  """
  x, y = _check(x, y, "ridge fit")
  mean, inv_scale, z = _standardise(x)
  inv_scale = inv_scale / np.sqrt(x.shape[1])
  z = z / np.sqrt(x.shape[1])
  ym = y.mean()
  w, v = np.linalg.eigh(z @ z.T)
  w = np.maximum(w, 0.0)
  a, err = _loo_penalty(w, v, y - ym, alphas)
  vy = v.T @ (y - ym)
  dual = v @ (vy / (w + a))
  coef = z.T @ dual
  params = dict(
    mean=mean.astype(np.float32),
    inv_scale=inv_scale.astype(np.float32),
    coef=coef.astype(np.float32),
    bias=np.float32(ym),
  )
  return params, dict(alpha=a, loo_rmse=err)
