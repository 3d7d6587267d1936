"""Mean-luminance baseline: the average BT.601 luma of the image.

For low-light images brighter is (weakly) better, so the mean luma is the
floor every learned model must beat (on BIQ2021's darkest images it ranks MOS
with SRCC of about 0.3). Luma ``Y' = 0.299 R' + 0.587 G' + 0.114 B'`` (ITU-R
BT.601) on the gamma-encoded values in [0, 1]; the score is in [0, 1], higher is
better.
"""

from __future__ import annotations

import numpy as np

NAME = "luminance"
BT601_WEIGHTS = (0.299, 0.587, 0.114)


def mean_luma(image01: np.ndarray) -> float:
  """Mean BT.601 luma of a float RGB ``[H, W, 3]`` (or grey ``[H, W]``) image in [0, 1]."""
  img = np.asarray(image01, dtype=np.float64)
  if img.ndim == 3 and img.shape[-1] == 1:
    img = img[..., 0]
  if img.size == 0 or img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[-1] != 3):
    raise ValueError(f"expected an RGB [H, W, 3] or grey [H, W] image, got shape {img.shape}")
  if not np.all(np.isfinite(img)):
    raise ValueError("image contains NaN/inf")
  luma = img if img.ndim == 2 else img @ np.asarray(BT601_WEIGHTS)
  return float(luma.mean())


class MeanLuminance:
  """Scores an image by its mean BT.601 luma (higher is better)."""

  name = NAME
  higher_is_better = True
  score_range = (0.0, 1.0)
  description = "mean BT.601 luma; higher is better"

  def score(self, image01: np.ndarray) -> float:
    return mean_luma(image01)
