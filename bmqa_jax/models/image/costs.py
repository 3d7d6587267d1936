"""Parameter counts and FLOPs of the image encoders (the paper's Fig. 10 axes).

FLOPs come from XLA's cost analysis of the jitted eval-mode forward pass at
batch 1 (one multiply-add = 2 FLOPs); nothing is run or compiled.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from bmqa_jax.models import image


def _abstract(name: str, image_size: int, num_classes: int | None):
  kwargs = {"num_classes": num_classes}
  if image.family(name) == "vit":
    kwargs["image_size"] = image_size
  model = image.create(name, **kwargs)
  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  return model, x, jax.eval_shape(model.init, jax.random.key(0), x)


def parameter_count(name: str, num_classes: int | None = 1000, image_size: int = 224) -> int:
  """Trainable parameters (``params`` collection) of ``create(name)``; with
  ``num_classes=1000`` this is torchvision's ``num_params``."""
  _, _, variables = _abstract(name, image_size, num_classes)
  return sum(math.prod(v.shape) for v in jax.tree.leaves(variables["params"]))


def forward_flops(name: str, image_size: int = 224, num_classes: int | None = 1000) -> float:
  """FLOPs of one eval-mode forward pass of one image, per XLA's cost analysis."""
  model, x, variables = _abstract(name, image_size, num_classes)
  analysis = jax.jit(model.apply).lower(variables, x).cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older JAX returned one dict per device
    analysis = analysis[0]
  return float(analysis["flops"])
