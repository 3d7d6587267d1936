"""BRISQUE (Mittal, Moorthy & Bovik, "No-reference image quality assessment in
the spatial domain", IEEE TIP 2012).

Features (Sec. III, Table I), as the authors' MATLAB ``brisquefeatures.m``:
grey image (MATLAB ``rgb2gray`` of the uint8 image) → MSCN coefficients
(Eq. 1–3, 7×7 Gaussian window σ = 7/6, C = 1, zero padding) → a GGD fit of the
coefficients (Eq. 4: shape, variance) and AGGD fits of the products of each
coefficient with its neighbour in four orientations (Eq. 5–10: shape, mean, left
and right variance; circular shifts [0 1], [1 0], [1 1], [-1 1]) → 18 features;
repeated on the image downsampled by 2 (MATLAB ``imresize(0.5)``) → 36.

Regressor (Sec. IV): the features, scaled to [-1, 1] per feature, go through
an RBF epsilon-SVR. Two kinds, with different score conventions:

* **pretrained** (:meth:`Brisque.from_files`, :meth:`Brisque.from_installed_package`):
  a LIBSVM model trained on LIVE DMOS — scores about 0..100, *lower is better*.
  This package ships no model (the LIVE release's licence does not allow us to
  redistribute it); it reads the user's files, or the model that the PyPI
  package ``brisque`` (Apache-2.0; ``brisque/models/svm.txt`` +
  ``normalize.pickle``) ships, at run time. Note: that package trained its SVR
  on LIVE with its own, slightly different feature code (scikit-image grey
  weights, an AGGD instead of a GGD for the first pair of features, bicubic
  downsampling without antialiasing); on our features its scores follow its own
  closely but not exactly (``tests/test_baselines.py`` measures how closely).
* **fitted** (:meth:`Brisque.fit`): an SVR trained with scikit-learn on the
  features of a training split against its MOS — the protocol used when BRISQUE
  is reported on a new database; scores on the MOS scale, *higher is better*.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from collections.abc import Sequence

import numpy as np

from bmqa_jax.baselines import nss
from bmqa_jax.baselines import svr as svr_lib

NAME = "brisque"
FEATURES_PER_SCALE = 18
NUM_FEATURES = 2 * FEATURES_PER_SCALE  # with the default two scales
# Neighbour offsets of the paired products (MATLAB circshift shifts): H, V, D1, D2.
PAIR_SHIFTS = ((0, 1), (1, 0), (1, 1), (-1, 1))
# Nominal output range of a LIVE-DMOS-trained model (DMOS scale).
LIVE_SCORE_RANGE = (0.0, 100.0)
# Installed PyPI packages known to ship a LIVE-trained BRISQUE SVR:
# (import name, model file, feature-range file) relative to the package folder.
PACKAGED_MODELS = (
  ("brisque", "models/svm.txt", "models/normalize.pickle"),
  ("imquality", "models/brisque_svm.txt", "models/normalize.pickle"),
)


@dataclasses.dataclass(frozen=True)
class BrisqueConfig:
  """Feature settings; the defaults are those of the paper and MATLAB release."""

  window_size: int = 7
  window_sigma: float = 7.0 / 6.0
  c: float = 1.0
  num_scales: int = 2
  scale_factor: float = 0.5


def feature_names() -> list[str]:
  names = []
  for s in range(2):
    names += [f"s{s}_mscn_alpha", f"s{s}_mscn_var"]
    for o in ("h", "v", "d1", "d2"):
      names += [f"s{s}_{o}_alpha", f"s{s}_{o}_mean", f"s{s}_{o}_lvar", f"s{s}_{o}_rvar"]
  return names


def _scale_features(coeffs: np.ndarray) -> list[float]:
  alpha, sigma = nss.fit_ggd(coeffs)
  feats = [alpha, sigma**2]
  for shift in PAIR_SHIFTS:
    pair = coeffs * np.roll(coeffs, shift, axis=(0, 1))
    a, left, right = nss.fit_aggd(pair)
    mean = (right - left) * nss.aggd_mean_factor(a) * nss.aggd_scale_factor(a)
    feats += [a, mean, left**2, right**2]
  return feats


def brisque_features(image01: np.ndarray, config: BrisqueConfig = BrisqueConfig()) -> np.ndarray:
  """The 36 BRISQUE features of an RGB ``[H, W, 3]`` (or grey) image in [0, 1].

  Raises:
    nss.DegenerateStatisticsError: a flat image (no texture at all).
    ValueError: a bad image array, or one too small for the window.
  """
  grey = nss.matlab_rgb2gray(image01)
  if min(grey.shape) < config.window_size:
    raise ValueError(f"image {grey.shape} is smaller than the {config.window_size}-pixel window")
  feats: list[float] = []
  for s in range(config.num_scales):
    coeffs, _ = nss.mscn(
      grey, window_size=config.window_size, sigma=config.window_sigma, c=config.c, padding="zero"
    )
    feats += _scale_features(coeffs)
    if s + 1 < config.num_scales:
      grey = nss.matlab_imresize(grey, config.scale_factor)
  return np.asarray(feats, dtype=np.float64)


class Brisque:
  """BRISQUE = features + scaler + SVR. See the module docstring for the two kinds."""

  name = NAME

  def __init__(
    self,
    scaler: svr_lib.FeatureScaler,
    regressor: svr_lib.RbfSvr,
    *,
    higher_is_better: bool,
    score_range: tuple[float, float],
    source: str,
    config: BrisqueConfig = BrisqueConfig(),
  ):
    if scaler.low.size != FEATURES_PER_SCALE * config.num_scales:
      raise ValueError(
        f"scaler has {scaler.low.size} ranges, BRISQUE has "
        f"{FEATURES_PER_SCALE * config.num_scales} features"
      )
    self.scaler = scaler
    self.regressor = regressor
    self.higher_is_better = higher_is_better
    self.score_range = score_range
    self.source = source
    self.config = config

  @property
  def description(self) -> str:
    direction = "higher" if self.higher_is_better else "lower"
    return f"BRISQUE ({self.source}); {direction} is better"

  def features(self, image01: np.ndarray) -> np.ndarray:
    return brisque_features(image01, self.config)

  def score_features(self, features: np.ndarray) -> np.ndarray:
    """Scores a ``[N, 36]`` feature matrix (or one vector) -> ``[N]``."""
    return self.regressor(self.scaler(np.atleast_2d(features)))

  def score(self, image01: np.ndarray) -> float:
    return float(self.score_features(self.features(image01))[0])

  @classmethod
  def from_files(
    cls,
    model_path: str | os.PathLike,
    range_path: str | os.PathLike,
    *,
    higher_is_better: bool = False,
    score_range: tuple[float, float] = LIVE_SCORE_RANGE,
    config: BrisqueConfig = BrisqueConfig(),
  ) -> "Brisque":
    """A pretrained model: a LIBSVM model file and its feature ranges.

    ``range_path`` is an ``svm-scale`` range file (the LIVE release's ``allrange``),
    JSON ``{"min": [...], "max": [...]}`` or an ``.npz`` (never a pickle:
    :func:`svr_lib.load_svm_scale_range`). The defaults describe a model trained
    on LIVE DMOS (lower is better).
    """
    return cls._from(
      model_path,
      svr_lib.load_svm_scale_range(range_path),
      higher_is_better=higher_is_better,
      score_range=score_range,
      config=config,
    )

  @classmethod
  def _from(
    cls,
    model_path,
    scaler,
    *,
    higher_is_better=False,
    score_range=LIVE_SCORE_RANGE,
    config=BrisqueConfig(),
  ) -> "Brisque":
    return cls(
      scaler,
      svr_lib.load_libsvm_model(model_path),
      higher_is_better=higher_is_better,
      score_range=score_range,
      source=f"pretrained SVR {os.fspath(model_path)}",
      config=config,
    )

  @classmethod
  def from_installed_package(cls, config: BrisqueConfig = BrisqueConfig()) -> "Brisque":
    """The LIVE-trained SVR that an installed PyPI package ships (read, not imported).

    Raises:
      FileNotFoundError: no such package is installed; the message says what to do.
    """
    model, ranges = find_packaged_model()
    if model is None:
      raise FileNotFoundError(
        "no pretrained BRISQUE model found: install the PyPI package `brisque` "
        "(pip install --no-deps brisque==0.2.0; only its model files are read), pass "
        "your LIVE model with Brisque.from_files(model, range), or fit a regressor "
        "on your training split with Brisque.fit(...)"
      )
    # The package's normalize.pickle holds plain lists; read without resolving globals.
    out = cls._from(model, svr_lib.load_svm_scale_range(ranges, plain_pickle=True), config=config)
    out.source = f"LIVE-trained SVR shipped by the installed package at {os.path.dirname(model)}"
    return out

  @classmethod
  def fit(
    cls,
    features: np.ndarray,
    mos: Sequence[float],
    *,
    hparams: svr_lib.SvrHyperparameters = svr_lib.SvrHyperparameters(),
    score_range: tuple[float, float] = (0.0, 1.0),
    config: BrisqueConfig = BrisqueConfig(),
  ) -> "Brisque":
    """Trains the SVR on ``[N, 36]`` training features against MOS (higher = better)."""
    scaler, regressor = svr_lib.fit_svr(features, mos, hparams)
    return cls(
      scaler,
      regressor,
      higher_is_better=True,
      score_range=score_range,
      source=(
        f"SVR fitted on {len(mos)} training images (C={hparams.c}, "
        f"gamma={hparams.gamma}, epsilon={hparams.epsilon})"
      ),
      config=config,
    )


def find_packaged_model() -> tuple[str | None, str | None]:
  """Paths of a LIVE-trained BRISQUE model shipped by an installed package, if any."""
  for package, model_rel, range_rel in PACKAGED_MODELS:
    try:
      spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
      spec = None
    if spec is None or not spec.submodule_search_locations:
      continue
    for folder in spec.submodule_search_locations:
      model, ranges = os.path.join(folder, model_rel), os.path.join(folder, range_rel)
      if os.path.isfile(model) and os.path.isfile(ranges):
        return model, ranges
  return None, None
