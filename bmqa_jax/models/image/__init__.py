"""Image encoders of the paper (Eq. 5–6, Table 1, Fig. 10), by name.

Contract (stable; the trainer, the converter and the tests rely on it)::

    from bmqa_jax.models import image
    model = image.create('resnet50', dtype=jnp.bfloat16)        # a flax.linen.Module
    variables = model.init(rng, images)                          # or convert.from_torch
    out = model.apply(variables, images, train=False)
    out = model.apply(variables, images, train=True,             # BatchNorm families
                      mutable=['batch_stats'], rngs={'dropout': rng})

* ``images``: float32 ``[B, H, W, 3]``, RGB, normalised with the ImageNet
  mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225), as torchvision's
  models expect. (The EfficientNet-Lite models undo this internally and apply
  their own (x·255 − 127) / 128 scaling; see :mod:`.efficientnet`.)
* The result is a dict of float32 arrays:

  - ``pooled`` ``[B, D]``: the vector torchvision's model gives when its last
    ``Linear`` is replaced by ``Identity``, in eval mode;
  - ``tokens`` ``[B, N, C]``: the last spatial feature map flattened row-major
    (``N = H'·W'``), or the transformer's output tokens (class token first);
  - ``logits`` ``[B, num_classes]`` only when created with ``num_classes``;
  - ``levels`` only when created with ``levels`` (a sequence of stage
    indices): a tuple, one entry per requested index, of token maps
    ``[B, H_l·W_l, C_l]`` (row-major), stage ``l`` being the family's ``l``-th
    resolution stage as its module docstring lists.

* Keyword arguments of :func:`create` common to every family:
  ``num_classes`` (default ``None``: no classifier), ``dtype`` (compute dtype
  of activations, e.g. ``jnp.bfloat16``) and ``param_dtype`` (default float32).
  Family-specific ones (``dropout_rate``, ``stochastic_depth_rate``, ...) are the
  dataclass fields of the family's module; an unknown keyword raises.
* Collections: ``params`` always; ``batch_stats`` for the BatchNorm families
  (ResNet, EfficientNet, MobileNetV2). ``train=True`` needs
  ``mutable=['batch_stats']`` for those and a ``'dropout'`` RNG where dropout
  or stochastic depth is active.

Names: :func:`names` lists every registered encoder; :data:`PAPER_NAMES` are the
ones of the paper (parity-tested against torchvision); :data:`SMALL_NAMES`
(``vgg_tiny``, ``resnet_tiny``, ``efficientnet_tiny``, ``vit_tiny`` — 32 px
input — and ``convnext_mini``) are small configurations of the same code for
tests and the CPU quickstart. :data:`EXTRA_NAMES` (``vgg16``, ``mobilenet_v2``,
``alexnet``) are torchvision models outside the paper with packaged ImageNet
weights (:mod:`.pretrained`), useful as quality-feature trunks.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn

from bmqa_jax.models.image import alexnet
from bmqa_jax.models.image import convnext
from bmqa_jax.models.image import efficientnet
from bmqa_jax.models.image import mobilenet
from bmqa_jax.models.image import resnet
from bmqa_jax.models.image import vgg
from bmqa_jax.models.image import vit

_FAMILIES = (vgg, resnet, efficientnet, vit, convnext, mobilenet, alexnet)

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
for _module in _FAMILIES:
  _REGISTRY.update(_module.VARIANTS)

PAPER_NAMES = (
  "vgg19",
  "resnet18",
  "resnet34",
  "resnet50",
  "resnet101",
  "resnet152",
  "efficientnet_b0",
  "efficientnet_b1",
  "efficientnet_b2",
  "efficientnet_b3",
  "efficientnet_b4",
  "efficientnet_lite0",
  "efficientnet_lite1",
  "efficientnet_lite2",
  "vit_b32",
  "vit_b16",
  "convnext_tiny",
  "convnext_small",
  "convnext_base",
)
# Small configurations of the same code, for tests and the CPU quickstart.
SMALL_NAMES = ("vgg_tiny", "resnet_tiny", "efficientnet_tiny", "vit_tiny", "convnext_mini")
# torchvision models outside the paper, with packaged ImageNet weights
# (parity-tested in tests/test_pretrained_towers.py).
EXTRA_NAMES = ("vgg16", "mobilenet_v2", "alexnet")
assert set(_REGISTRY) == set(PAPER_NAMES) | set(SMALL_NAMES) | set(EXTRA_NAMES), sorted(_REGISTRY)


def names() -> list[str]:
  """Every registered encoder name (paper, small and extra models), sorted."""
  return sorted(_REGISTRY)


def family(name: str) -> str:
  """The family (module) of an encoder name: ``'resnet'``, ``'vit'``, ..."""
  _check(name)
  return _REGISTRY[name].func.__module__.rsplit(".", 1)[-1]


def create(name: str, **kwargs: Any) -> nn.Module:
  """Builds the encoder ``name`` (see :func:`names`) with the given fields.

  Raises:
    KeyError: unknown name.
    TypeError: a keyword that is not a field of the family's module.
  """
  _check(name)
  factory = _REGISTRY[name]
  fields = {f.name for f in dataclasses.fields(factory.func)} - {"parent", "name"}
  unknown = sorted(set(kwargs) - fields)
  if unknown:
    raise TypeError(
      f"image encoder {name!r} ({factory.func.__name__}) has no "
      f"field(s) {unknown}; valid: {sorted(fields)}"
    )
  return factory(**kwargs)


def _check(name: str) -> None:
  if name not in _REGISTRY:
    raise KeyError(f"unknown image encoder {name!r}; known: {names()}")
