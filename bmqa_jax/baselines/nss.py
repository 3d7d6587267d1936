"""Natural-scene statistics shared by BRISQUE and NIQE (Mittal et al. 2012, 2013).

Every function follows the authors' MATLAB release (LIVE, ``brisque_release``
and ``niqe_release``) step by step, so that features agree with it and with
other faithful ports:

* :func:`matlab_rgb2gray` — MATLAB ``rgb2gray`` on a uint8 image (the releases
  convert before anything else), result rounded back to integers;
* :func:`gaussian_window` — ``fspecial('gaussian', 7, 7/6)``;
* :func:`mscn` — mean-subtracted contrast-normalised coefficients
  ``(I - mu) / (sigma + C)`` (BRISQUE Eq. 1–3), with zero padding (BRISQUE's
  ``filter2``) or edge replication (NIQE's ``imfilter(..., 'replicate')``);
* :func:`fit_ggd`, :func:`fit_aggd` — moment matching on the grid
  ``0.2:0.001:10`` of the release (GGD: BRISQUE Eq. 4; AGGD: Eq. 9–10);
* :func:`matlab_imresize` — MATLAB ``imresize`` (bicubic, antialiased), used
  for the second scale.
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.ndimage
import scipy.special

# MATLAB rgb2gray weights: the first row of inv of the NTSC (YIQ) matrix.
MATLAB_GREY_WEIGHTS = (0.298936021293775, 0.587043074451121, 0.114020904255103)
# Shape-parameter grid of the MATLAB release: 0.2:0.001:10.
SHAPE_GRID = (0.2, 10.0, 0.001)
UINT8_MAX = 255.0
# |I - mu| below this (grey levels, 0..255 scale) is the filter's rounding noise
# in a flat region, where the exact value is 0. Snapping it to 0 makes flat regions
# (frequent in low-light photos: clipped black) give exact zeros whatever the
# filter's summation order; otherwise the sign of 1e-14 noise decides into which
# side of the AGGD fit a coefficient falls, and implementations disagree there.
FLAT_TOLERANCE = 1e-9


def matlab_rgb2gray(image01: np.ndarray) -> np.ndarray:
  """MATLAB ``double(rgb2gray(uint8(255 * image)))`` as float64 in 0..255.

  Args:
    image01: float RGB ``[H, W, 3]`` in [0, 1] (or ``[H, W]`` grey, kept as is
      apart from the 0..255 scaling and rounding).
  """
  img = np.asarray(image01, dtype=np.float64)
  if img.ndim == 3 and img.shape[-1] == 1:
    img = img[..., 0]
  if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[-1] != 3):
    raise ValueError(f"expected an RGB [H, W, 3] or grey [H, W] image, got shape {img.shape}")
  if not np.all(np.isfinite(img)):
    raise ValueError("image contains NaN/inf")
  # MATLAB uint8(): round half away from zero, saturate.
  u8 = np.floor(np.clip(img, 0.0, 1.0) * UINT8_MAX + 0.5)
  if u8.ndim == 2:
    return u8
  grey = u8 @ np.asarray(MATLAB_GREY_WEIGHTS)
  return np.floor(grey + 0.5)


@functools.lru_cache(maxsize=8)
def _gaussian_1d(size: int, sigma: float) -> np.ndarray:
  x = np.arange(size) - (size - 1) / 2.0
  g = np.exp(-(x**2) / (2.0 * sigma**2))
  g /= g.sum()
  g.setflags(write=False)
  return g


def gaussian_window(size: int = 7, sigma: float = 7.0 / 6.0) -> np.ndarray:
  """``fspecial('gaussian', size, sigma)``: normalised 2-D Gaussian [size, size].

  It is the outer product of the normalised 1-D Gaussian, which is how
  :func:`mscn` applies it (two 1-D passes; same result, 3.5x fewer operations).
  """
  g = _gaussian_1d(size, sigma)
  return np.outer(g, g)


def _filter(img: np.ndarray, size: int, sigma: float, padding: str) -> np.ndarray:
  mode = {"zero": "constant", "replicate": "nearest"}[padding]
  g = _gaussian_1d(size, sigma)
  out = scipy.ndimage.correlate1d(img, g, axis=0, mode=mode, cval=0.0)
  return scipy.ndimage.correlate1d(out, g, axis=1, mode=mode, cval=0.0)


def mscn(
  grey: np.ndarray,
  *,
  window_size: int = 7,
  sigma: float = 7.0 / 6.0,
  c: float = 1.0,
  padding: str = "zero",
) -> tuple[np.ndarray, np.ndarray]:
  """MSCN coefficients and the local deviation ``sigma`` (BRISQUE Eq. 1–3).

  Args:
    grey: float64 ``[H, W]`` on the 0..255 scale.
    window_size, sigma: the Gaussian weighting window (7, 7/6 in both papers).
    c: stabilising constant (1 on the 0..255 scale).
    padding: 'zero' (BRISQUE's ``filter2``) or 'replicate' (NIQE's ``imfilter``).

  Returns:
    ``(mscn, sigma)``, both ``[H, W]``.
  """
  if padding not in ("zero", "replicate"):
    raise ValueError(f"padding must be 'zero' or 'replicate', got {padding!r}")
  mu = _filter(grey, window_size, sigma, padding)
  sd = np.sqrt(np.abs(_filter(grey * grey, window_size, sigma, padding) - mu * mu))
  centred = grey - mu
  centred[np.abs(centred) < FLAT_TOLERANCE] = 0.0
  return centred / (sd + c), sd


@functools.lru_cache(maxsize=1)
def _shape_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  lo, hi, step = SHAPE_GRID
  gam = np.linspace(lo, hi, int(round((hi - lo) / step)) + 1)
  lg = scipy.special.gammaln
  # GGD:  Gamma(1/a) Gamma(3/a) / Gamma(2/a)^2;  AGGD: its reciprocal.
  r_ggd = np.exp(lg(1.0 / gam) + lg(3.0 / gam) - 2.0 * lg(2.0 / gam))
  r_aggd = 1.0 / r_ggd
  for a in (gam, r_ggd, r_aggd):
    a.setflags(write=False)
  return gam, r_ggd, r_aggd


class DegenerateStatisticsError(ValueError):
  """The coefficients have no spread (e.g. a flat image): no GGD/AGGD fit exists."""


def fit_ggd(x: np.ndarray) -> tuple[float, float]:
  """Generalised-Gaussian fit by moment matching (BRISQUE's ``estimateggdparam``).

  Returns:
    ``(alpha, sigma)``: shape and standard deviation.
  """
  v = np.asarray(x, dtype=np.float64).ravel()
  gam, r_ggd, _ = _shape_tables()
  sigma_sq = float(np.mean(v * v))
  e = float(np.mean(np.abs(v)))
  if sigma_sq == 0.0 or e == 0.0:
    raise DegenerateStatisticsError("GGD fit of all-zero coefficients (flat image region)")
  rho = sigma_sq / (e * e)
  return float(gam[np.argmin(np.abs(rho - r_ggd))]), float(np.sqrt(sigma_sq))


def fit_aggd(x: np.ndarray) -> tuple[float, float, float]:
  """Asymmetric generalised-Gaussian fit (``estimateaggdparam`` of both releases).

  Returns:
    ``(alpha, left_std, right_std)``; BRISQUE uses the standard deviations
    (squared), NIQE the scales ``std * sqrt(Gamma(1/a) / Gamma(3/a))``.
  """
  v = np.asarray(x, dtype=np.float64).ravel()
  gam, _, r_aggd = _shape_tables()
  left, right = v[v < 0], v[v > 0]
  if left.size == 0 or right.size == 0:
    raise DegenerateStatisticsError(
      f"AGGD fit needs negative and positive coefficients, got {left.size} negative "
      f"and {right.size} positive (flat image region)"
    )
  left_std = float(np.sqrt(np.mean(left * left)))
  right_std = float(np.sqrt(np.mean(right * right)))
  gamma_hat = left_std / right_std
  r_hat = float(np.mean(np.abs(v))) ** 2 / float(np.mean(v * v))
  r_hat_norm = r_hat * (gamma_hat**3 + 1) * (gamma_hat + 1) / (gamma_hat**2 + 1) ** 2
  alpha = float(gam[np.argmin((r_aggd - r_hat_norm) ** 2)])
  return alpha, left_std, right_std


def aggd_scale_factor(alpha: float) -> float:
  """``sqrt(Gamma(1/a) / Gamma(3/a))``: standard deviation -> AGGD scale beta."""
  lg = scipy.special.gammaln
  return float(np.exp(0.5 * (lg(1.0 / alpha) - lg(3.0 / alpha))))


def aggd_mean_factor(alpha: float) -> float:
  """``Gamma(2/a) / Gamma(1/a)``: (beta_r - beta_l) times this is the AGGD mean."""
  lg = scipy.special.gammaln
  return float(np.exp(lg(2.0 / alpha) - lg(1.0 / alpha)))


def _cubic(x: np.ndarray) -> np.ndarray:
  a = np.abs(x)
  a2, a3 = a * a, a * a * a
  return (1.5 * a3 - 2.5 * a2 + 1.0) * (a <= 1) + (-0.5 * a3 + 2.5 * a2 - 4.0 * a + 2.0) * (
    (a > 1) & (a <= 2)
  )


def _contributions(
  in_len: int, out_len: int, scale: float, antialias: bool
) -> tuple[np.ndarray, np.ndarray]:
  kernel_width = 4.0
  if scale < 1 and antialias:
    kernel = lambda t: scale * _cubic(scale * t)
    kernel_width /= scale
  else:
    kernel = _cubic
  x = np.arange(1, out_len + 1, dtype=np.float64)
  u = x / scale + 0.5 * (1.0 - 1.0 / scale)
  left = np.floor(u - kernel_width / 2.0)
  taps = int(np.ceil(kernel_width)) + 2
  idx = left[:, None] + np.arange(taps)[None, :]  # 1-based, as MATLAB
  weights = kernel(u[:, None] - idx)
  weights /= weights.sum(axis=1, keepdims=True)
  mirror = np.concatenate([np.arange(in_len), np.arange(in_len)[::-1]])
  idx = mirror[np.mod(idx.astype(np.int64) - 1, mirror.size)]
  keep = np.any(weights != 0, axis=0)
  return weights[:, keep], idx[:, keep]


def matlab_imresize(img: np.ndarray, scale: float, *, antialias: bool = True) -> np.ndarray:
  """MATLAB ``imresize(img, scale)`` (bicubic, antialiasing) for a 2-D float image.

  Output size ``ceil(scale * [H, W])``; symmetric boundary handling; rows are
  resized first, then columns (MATLAB's order for equal scales).
  """
  img = np.asarray(img, dtype=np.float64)
  if img.ndim != 2:
    raise ValueError(f"matlab_imresize expects a 2-D image, got shape {img.shape}")
  if scale <= 0:
    raise ValueError(f"scale must be positive, got {scale}")
  out = img
  for axis in (0, 1):
    in_len = out.shape[axis]
    out_len = int(np.ceil(scale * in_len))
    w, idx = _contributions(in_len, out_len, scale, antialias)
    moved = np.moveaxis(out, axis, 0)  # [in_len, ...]
    res = np.zeros((out_len,) + moved.shape[1:])
    for k in range(w.shape[1]):  # one tap at a time keeps memory at one output
      res += w[:, k, None] * moved[idx[:, k]]
    out = np.moveaxis(res, 0, axis)
  return out
