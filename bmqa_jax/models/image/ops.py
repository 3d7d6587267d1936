"""The convolution and max pooling of every image encoder, chosen in one place.

A model builds its layers with the ops of :func:`for_backend`::

    ops = for_backend()
    nn.Conv(..., conv_general_dilated=ops.conv_general_dilated)
    x = ops.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

On the CPU backend they are the forms of :mod:`.cpu_kernels` (XLA:CPU runs
depthwise convolutions, 1×1 weight gradients and max-pooling gradients
slowly; docs/performance.md); on GPU and TPU, XLA's own. Both compute the
same function (float32 rounding aside), so a model's parameters and outputs
do not depend on the choice, and every program stays in XLA's persistent
compilation cache. Dense layers keep ``lax.dot_general`` everywhere.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import flax.linen as nn
import jax

from bmqa_jax.models.image.cpu_kernels import conv
from bmqa_jax.models.image.cpu_kernels import pooling


@dataclasses.dataclass(frozen=True)
class Ops:
  """``conv_general_dilated``: ``nn.Conv``'s field of that name (None: XLA's
  ``lax.conv_general_dilated``); ``max_pool``: ``flax.linen.max_pool``'s
  signature."""

  conv_general_dilated: Callable | None
  max_pool: Callable


XLA = Ops(conv_general_dilated=None, max_pool=nn.max_pool)
CPU = Ops(conv_general_dilated=conv.conv_general_dilated, max_pool=pooling.max_pool)


def for_backend(backend: str | None = None) -> Ops:
  """:data:`CPU` on the CPU backend, else :data:`XLA`; ``backend`` defaults to
  ``jax.default_backend()`` (asked when the model is traced)."""
  return CPU if (backend or jax.default_backend()) == "cpu" else XLA
