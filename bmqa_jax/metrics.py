"""Image-quality-assessment evaluation protocol (paper Sec. 5.1.4, Table 3).

Correlation and error between predicted quality scores and mean opinion scores
(MOS):

* ``srcc`` (Spearman) and ``krcc`` (Kendall tau-b) on the raw predictions: they
  only depend on the ranking, so a monotonic mapping would not change them.
* ``plcc`` (Pearson) and ``rmse`` either on the raw predictions or after a fitted
  monotonic logistic mapping of the predictions onto the MOS scale
  (``mapping='logistic4'`` or ``'logistic5'``), as the VQEG protocol prescribes.

The two logistic forms:

* ``'4'`` — VQEG (2000/2003) 4-parameter logistic::

      f(x) = (b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2

  started from ``[max MOS, min MOS, mean pred, std pred / 4]``.
* ``'5'`` — Sheikh, Sabir & Bovik (2006), "A statistical evaluation of recent
  full reference image quality assessment algorithms", 5-parameter form::

      f(x) = b1 * (1/2 - 1 / (1 + exp(b2 * (x - b3)))) + b4 * x + b5

  started from the LIVE MATLAB code's ``[10, 0, mean pred, 0.1, 0.1]``.

A fit that does not converge is never hidden: :func:`fit_logistic` returns a
:class:`LogisticFit` with ``converged=False`` and the optimiser's message;
``plcc``/``rmse`` with a mapping then raise :class:`LogisticFitError`, and
:func:`summary` reports ``None`` for the mapped numbers together with the flag.

Also here: :func:`grouped_summary` (per device / group and overall, Table 3).
Statistics over repeated splits and tables: :mod:`bmqa_jax.metrics_report`.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np
import scipy.optimize
import scipy.special
import scipy.stats

MAPPINGS = (None, "logistic4", "logistic5")
_MAPPING_KIND = {"logistic4": "4", "logistic5": "5"}
# Smallest sample size per metric: a correlation of two points is always ±1 and
# says nothing; a logistic with 4 or 5 parameters needs more points than that.
MIN_SAMPLES_CORRELATION = 3
MIN_SAMPLES_RMSE = 2
MIN_SAMPLES_LOGISTIC = {"4": 5, "5": 6}
DEFAULT_MAXFEV = 20_000
# Points on which a fitted mapping is checked to be monotonic over the data range.
MONOTONIC_CHECK_POINTS = 1001


class LogisticFitError(ValueError):
  """The logistic mapping could not be fitted (or did not converge)."""


def _as_vector(x: Any, name: str) -> np.ndarray:
  try:
    arr = np.asarray(x, dtype=np.float64)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{name}: cannot convert to a float array ({e})") from e
  if arr.ndim == 2 and 1 in arr.shape:
    arr = arr.reshape(-1)
  if arr.ndim != 1:
    raise ValueError(f"{name}: expected a 1-D array of scores, got shape {arr.shape}")
  bad = ~np.isfinite(arr)
  if bad.any():
    idx = np.flatnonzero(bad)
    raise ValueError(
      f"{name}: {idx.size} non-finite value(s) (NaN/inf), first at index(es) "
      f"{idx[:5].tolist()}: {arr[idx[:5]].tolist()}"
    )
  return arr


def _validate(pred: Any, mos: Any, min_n: int, what: str) -> tuple[np.ndarray, np.ndarray]:
  p = _as_vector(pred, "pred")
  m = _as_vector(mos, "mos")
  if p.shape != m.shape:
    raise ValueError(f"{what}: pred has {p.size} values but mos has {m.size}")
  if p.size < min_n:
    raise ValueError(f"{what}: needs at least {min_n} samples, got {p.size}")
  return p, m


def _check_not_constant(p: np.ndarray, m: np.ndarray, what: str) -> None:
  for name, arr in (("pred", p), ("mos", m)):
    if np.ptp(arr) == 0:
      raise ValueError(f"{what}: {name} is constant (all {arr[0]!r}); the correlation is undefined")


# --------------------------------------------------------------------------
# Logistic mapping
# --------------------------------------------------------------------------


def logistic4(x: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
  """VQEG 4-parameter logistic ``(b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2``."""
  z = -(np.asarray(x, np.float64) - b3) / np.abs(b4)
  # 1 / (1 + exp(z)) == expit(-z), computed without overflow.
  return (b1 - b2) * scipy.special.expit(-z) + b2


def logistic5(x: np.ndarray, b1: float, b2: float, b3: float, b4: float, b5: float) -> np.ndarray:
  """Sheikh et al. (2006) ``b1 (1/2 - 1/(1 + exp(b2 (x - b3)))) + b4 x + b5``."""
  x = np.asarray(x, np.float64)
  return b1 * (0.5 - scipy.special.expit(-b2 * (x - b3))) + b4 * x + b5


_FUNCS: dict[str, Callable[..., np.ndarray]] = {"4": logistic4, "5": logistic5}


@dataclasses.dataclass(frozen=True)
class LogisticFit:
  """Result of :func:`fit_logistic`.

  Attributes:
    kind: '4' or '5'.
    params: fitted parameters (the start point when the fit did not converge).
    start: the start point used.
    converged: whether ``curve_fit`` reported convergence.
    message: the optimiser's message (why it stopped / failed).
    monotonic: whether the fitted curve is monotonic over [min pred, max pred]
      (the 5-parameter form, with its linear term, need not be).
    nfev: number of function evaluations (None when unknown).
  """

  kind: str
  params: tuple[float, ...]
  start: tuple[float, ...]
  converged: bool
  message: str
  monotonic: bool
  nfev: int | None = None

  def __call__(self, x: Any) -> np.ndarray:
    """Maps raw predictions onto the MOS scale (raises when not converged)."""
    if not self.converged:
      raise LogisticFitError(
        f"logistic{self.kind} fit did not converge ({self.message}); refusing to map"
      )
    return _FUNCS[self.kind](np.asarray(x, np.float64), *self.params)

  def as_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def logistic_start(pred: np.ndarray, mos: np.ndarray, kind: str) -> tuple[float, ...]:
  """Start point of the fit: VQEG's for '4', the LIVE MATLAB code's for '5'."""
  if kind == "4":
    return (float(np.max(mos)), float(np.min(mos)), float(np.mean(pred)), float(np.std(pred) / 4.0))
  if kind == "5":
    return (10.0, 0.0, float(np.mean(pred)), 0.1, 0.1)
  raise ValueError(f"logistic kind must be '4' or '5', got {kind!r}")


def fit_logistic(
  pred: Any, mos: Any, kind: str = "4", *, maxfev: int = DEFAULT_MAXFEV
) -> LogisticFit:
  """Fits a monotonic logistic mapping from predictions to MOS (VQEG protocol).

  Args:
    pred: raw model predictions, 1-D.
    mos: mean opinion scores, same length.
    kind: '4' (VQEG 4-parameter) or '5' (Sheikh et al. 2006 5-parameter).
    maxfev: maximum number of function evaluations of the Levenberg–Marquardt fit.

  Returns:
    A :class:`LogisticFit`. Non-convergence is reported (``converged=False``,
    ``message``), not raised, so that callers can show it.

  Raises:
    ValueError: bad input (lengths, non-finite values, too few samples) or a
      constant prediction/MOS vector, for which no logistic is identifiable.
  """
  kind = str(kind)
  if kind not in _FUNCS:
    raise ValueError(f"logistic kind must be '4' or '5', got {kind!r}")
  p, m = _validate(pred, mos, MIN_SAMPLES_LOGISTIC[kind], f"fit_logistic(kind={kind})")
  if np.ptp(p) == 0:
    raise LogisticFitError(
      f"fit_logistic(kind={kind}): pred is constant (all {p[0]!r}); a logistic "
      "mapping is not identifiable"
    )
  if np.ptp(m) == 0:
    raise LogisticFitError(
      f"fit_logistic(kind={kind}): mos is constant (all {m[0]!r}); nothing to fit"
    )
  start = logistic_start(p, m, kind)
  func = _FUNCS[kind]
  try:
    with warnings.catch_warnings():
      # "Covariance of the parameters could not be estimated" is irrelevant here:
      # we use the point estimate only.
      warnings.simplefilter("ignore", scipy.optimize.OptimizeWarning)
      with np.errstate(over="ignore", invalid="ignore"):
        params, _, info, message, ier = scipy.optimize.curve_fit(
          func, p, m, p0=start, maxfev=maxfev, full_output=True
        )
    converged = ier in (1, 2, 3, 4) and bool(np.all(np.isfinite(params)))
    nfev = int(info.get("nfev", -1))
  except (RuntimeError, ValueError, FloatingPointError) as e:
    params, converged, message, nfev = np.asarray(start), False, str(e), None
  params_t = tuple(float(v) for v in params)
  monotonic = False
  if converged:
    grid = np.linspace(p.min(), p.max(), MONOTONIC_CHECK_POINTS)
    d = np.diff(func(grid, *params_t))
    monotonic = bool(np.all(d >= 0) or np.all(d <= 0))
    if not np.all(np.isfinite(func(p, *params_t))):
      converged, message = False, "fitted curve is not finite on the data"
  return LogisticFit(
    kind=kind,
    params=params_t,
    start=tuple(start),
    converged=converged,
    message=str(message),
    monotonic=monotonic,
    nfev=nfev,
  )


def _mapped(
  p: np.ndarray, m: np.ndarray, mapping: str | None
) -> tuple[np.ndarray, LogisticFit | None]:
  if mapping is None:
    return p, None
  if mapping not in _MAPPING_KIND:
    raise ValueError(f"mapping must be one of {MAPPINGS}, got {mapping!r}")
  fit = fit_logistic(p, m, _MAPPING_KIND[mapping])
  return fit(p), fit


# --------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------


def _pearson(p: np.ndarray, m: np.ndarray) -> float:
  pc, mc = p - p.mean(), m - m.mean()
  denom = math.sqrt(float(np.dot(pc, pc)) * float(np.dot(mc, mc)))
  if denom == 0.0:
    raise ValueError("plcc: a constant vector; the correlation is undefined")
  return float(np.clip(np.dot(pc, mc) / denom, -1.0, 1.0))


def plcc(pred: Any, mos: Any, mapping: str | None = None) -> float:
  """Pearson linear correlation of (optionally logistic-mapped) predictions and MOS."""
  p, m = _validate(pred, mos, MIN_SAMPLES_CORRELATION, "plcc")
  _check_not_constant(p, m, "plcc")
  q, _ = _mapped(p, m, mapping)
  return _pearson(q, m)


def srcc(pred: Any, mos: Any) -> float:
  """Spearman rank-order correlation (ties get average ranks)."""
  p, m = _validate(pred, mos, MIN_SAMPLES_CORRELATION, "srcc")
  _check_not_constant(p, m, "srcc")
  return _pearson(scipy.stats.rankdata(p), scipy.stats.rankdata(m))


def krcc(pred: Any, mos: Any) -> float:
  """Kendall rank correlation, tau-b (accounts for ties, as scipy's default)."""
  p, m = _validate(pred, mos, MIN_SAMPLES_CORRELATION, "krcc")
  _check_not_constant(p, m, "krcc")
  return float(scipy.stats.kendalltau(p, m).statistic)


def rmse(pred: Any, mos: Any, mapping: str | None = None) -> float:
  """Root mean squared error of (optionally logistic-mapped) predictions vs MOS."""
  p, m = _validate(pred, mos, MIN_SAMPLES_RMSE, "rmse")
  q, _ = _mapped(p, m, mapping)
  return float(np.sqrt(np.mean((q - m) ** 2)))


def summary(pred: Any, mos: Any, mapping: str | Sequence[str] | None = None) -> dict[str, Any]:
  """All metrics at once.

  Args:
    pred, mos: 1-D arrays of equal length.
    mapping: None, 'logistic4', 'logistic5' or a sequence of them.

  Returns:
    ``{'plcc', 'srcc', 'krcc', 'rmse', 'n'}`` on raw predictions; for each
    requested mapping ``M`` also ``plcc_M``, ``rmse_M`` (``None`` when the fit
    did not converge) and ``M_fit`` (:meth:`LogisticFit.as_dict`: params,
    converged, message, monotonic).

  Raises:
    ValueError: bad input or constant predictions/MOS.
  """
  p, m = _validate(pred, mos, MIN_SAMPLES_CORRELATION, "summary")
  _check_not_constant(p, m, "summary")
  out: dict[str, Any] = {
    "plcc": _pearson(p, m),
    "srcc": _pearson(scipy.stats.rankdata(p), scipy.stats.rankdata(m)),
    "krcc": float(scipy.stats.kendalltau(p, m).statistic),
    "rmse": float(np.sqrt(np.mean((p - m) ** 2))),
    "n": int(p.size),
  }
  if mapping is None:
    mappings: Sequence[str] = ()
  elif isinstance(mapping, str):
    mappings = (mapping,)
  else:
    mappings = tuple(mapping)
  for name in mappings:
    if name not in _MAPPING_KIND:
      raise ValueError(f"mapping must be one of {MAPPINGS}, got {name!r}")
    kind = _MAPPING_KIND[name]
    if p.size < MIN_SAMPLES_LOGISTIC[kind]:
      out[f"plcc_{name}"] = out[f"rmse_{name}"] = None
      out[f"{name}_fit"] = {
        "converged": False,
        "message": f"{p.size} samples < {MIN_SAMPLES_LOGISTIC[kind]} needed",
      }
      continue
    fit = fit_logistic(p, m, kind)
    out[f"{name}_fit"] = fit.as_dict()
    if fit.converged:
      q = fit(p)
      out[f"plcc_{name}"] = _pearson(q, m) if np.ptp(q) > 0 else None
      out[f"rmse_{name}"] = float(np.sqrt(np.mean((q - m) ** 2)))
    else:
      out[f"plcc_{name}"] = out[f"rmse_{name}"] = None
  return out


def grouped_summary(
  pred: Any, mos: Any, groups: Sequence[Hashable], mapping: str | Sequence[str] | None = None
) -> dict[str, Any]:
  """Metrics overall and per group (e.g. per capture device, paper Table 3).

  Returns:
    ``{'overall': summary(...), 'per_group': {group: summary(...)}}``. A group
    whose metrics are undefined (fewer than 3 samples, constant MOS or
    predictions) gets ``{'n': k, 'error': reason}`` instead of being dropped.
  """
  p, m = _validate(pred, mos, MIN_SAMPLES_CORRELATION, "grouped_summary")
  g = np.asarray(list(groups), dtype=object)
  if g.shape != p.shape:
    raise ValueError(f"grouped_summary: groups has {g.size} values but pred has {p.size}")
  per_group: dict[Hashable, Any] = {}
  for key in sorted(set(g.tolist()), key=str):
    sel = np.array([x == key for x in g.tolist()])
    try:
      per_group[key] = summary(p[sel], m[sel], mapping)
    except ValueError as e:
      per_group[key] = {"n": int(sel.sum()), "error": str(e)}
  return {"overall": summary(p, m, mapping), "per_group": per_group}
