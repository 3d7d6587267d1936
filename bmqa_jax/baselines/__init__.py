"""Reference no-reference IQA baselines shown next to BMQA in every table.

``create(name, **kwargs)`` builds one by name; ``names()`` lists them. Every
baseline has

* ``score(image) -> float`` for a float32 RGB ``[H, W, 3]`` image in [0, 1]
  (what :func:`bmqa_jax.data.image_io.read_image` returns);
* ``score_range`` (nominal ``(low, high)``) and ``higher_is_better``;
* ``name`` and ``description`` (which model / parameters it uses).

Baselines:

* ``luminance`` — mean BT.601 luma (:mod:`.luminance`); higher is better.
* ``brisque`` — Mittal et al. 2012 (:mod:`.brisque`). ``create('brisque')`` uses a
  LIVE-trained SVR an installed package ships (lower is better); pass
  ``model=`` and ``ranges=`` for your own LIBSVM files, or build one fitted on a
  training split with :meth:`.brisque.Brisque.fit` (higher is better).
* ``niqe`` — Mittal et al. 2013 (:mod:`.niqe`); lower is better.
  ``create('niqe', pristine='auto'|'live'|'skimage'|FILE|FOLDER)``.
"""

from __future__ import annotations

from typing import Any, Callable

from bmqa_jax.baselines import brisque as brisque_lib
from bmqa_jax.baselines import luminance as luminance_lib
from bmqa_jax.baselines import niqe as niqe_lib


def _create_brisque(model: str | None = None, ranges: str | None = None, **kwargs: Any):
  if (model is None) != (ranges is None):
    raise ValueError("brisque: give both `model` (LIBSVM file) and `ranges`, or neither")
  if model is not None:
    return brisque_lib.Brisque.from_files(model, ranges, **kwargs)
  return brisque_lib.Brisque.from_installed_package(**kwargs)


_REGISTRY: dict[str, Callable[..., Any]] = {
  luminance_lib.NAME: luminance_lib.MeanLuminance,
  brisque_lib.NAME: _create_brisque,
  niqe_lib.NAME: niqe_lib.Niqe,
}


def names() -> list[str]:
  return list(_REGISTRY)


def create(name: str, **kwargs: Any):
  """Builds the baseline ``name`` (see the module docstring for its options)."""
  try:
    factory = _REGISTRY[name]
  except KeyError:
    raise ValueError(f"unknown baseline {name!r}; known: {names()}") from None
  return factory(**kwargs)
