"""A closed-form ridge probe beside the attentive heads (`config.model.ridge`).

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
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

# Penalties tried (on features standardised and divided by √D, as the lever
# study did): the one with the least leave-one-out squared error wins.
ALPHAS = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0)


def pooled(maps: Sequence) -> jnp.ndarray:
  """[B, N_l, C_l] maps → [B, ΣC_l]: each level averaged over its cells."""
  return jnp.concatenate([m.astype(jnp.float32).mean(1) for m in maps], -1)


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


def fit(x: np.ndarray, y: np.ndarray, alphas: Sequence[float] = ALPHAS) -> tuple[dict, dict]:
  """Ridge regression of `y` [n] on `x` [n, D] (float64, dual form).

  Returns (the `RidgeProbe` parameters, info: the chosen `alpha` and its
  leave-one-out RMSE). The features are standardised and divided by √D so
  that one penalty grid suits any width; the intercept is the mean of y.
  """
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if x.ndim != 2 or len(x) != len(y) or len(y) < 3:
    raise ValueError(
      f"ridge fit: need [n, D] features and n ≥ 3 targets, got {x.shape} and {y.shape}"
    )
  if not (np.isfinite(x).all() and np.isfinite(y).all()):
    raise ValueError("ridge fit: non-finite features or targets")
  mean, sd = x.mean(0), x.std(0)
  # A feature constant over the training photos (a channel that never fires)
  # carries nothing: scale 0, so an unseen value cannot move the score and no
  # huge scale overflows when the heads are stored in float16.
  live = sd > 1e-6 * max(float(sd.max()), 1e-30)
  inv_scale = np.where(live, 1.0 / (np.where(live, sd, 1.0) * np.sqrt(x.shape[1])), 0.0)
  z = (x - mean) * inv_scale
  ym = y.mean()
  w, v = np.linalg.eigh(z @ z.T)
  w = np.maximum(w, 0.0)
  vy = v.T @ (y - ym)
  best = None
  for a in alphas:
    shrink = w / (w + a)
    fitted = v @ (shrink * vy)
    hat = (v * v) @ shrink  # diagonal of the hat matrix
    loo = (y - ym - fitted) / np.maximum(1.0 - hat - 1.0 / len(y), 1e-6)
    err = float(np.sqrt(np.mean(loo**2)))
    if best is None or err < best[0]:
      best = (err, a)
  err, a = best
  dual = v @ (vy / (w + a))
  coef = z.T @ dual
  params = dict(
    mean=mean.astype(np.float32),
    inv_scale=inv_scale.astype(np.float32),
    coef=coef.astype(np.float32),
    bias=np.float32(ym),
  )
  return params, dict(alpha=a, loo_rmse=err)
