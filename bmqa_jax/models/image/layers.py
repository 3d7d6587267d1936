"""Pieces shared by the image-encoder families: torch-matching initialisers,
stochastic depth, and the common output dict of every encoder."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# torch.nn.init.kaiming_normal_(mode='fan_out', nonlinearity='relu'): torchvision's
# convolution init for ResNet, VGG and EfficientNet.
kaiming_normal_fan_out = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')

# torch.nn.Linear's default init of the weight (kaiming_uniform with a=sqrt(5)),
# which is uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_linear_default = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


def encoder_outputs(module: nn.Module, pooled: jax.Array, tokens: jax.Array, *,
                    head_name: str, head_init=nn.initializers.lecun_normal(),
                    dropout_rate: float = 0.0, train: bool = False) -> dict[str, jax.Array]:
  """The dict every encoder returns, in float32.

  Must be called from inside ``module``'s ``@nn.compact`` ``__call__``: when
  ``module.num_classes`` is set, it adds the classifier ``nn.Dense`` named
  ``head_name`` (torchvision's last ``Linear``), preceded by dropout at
  ``dropout_rate`` in training.

  Returns:
    ``pooled`` ``[B, D]`` (the vector the classifier sees), ``tokens``
    ``[B, N, C]`` and, with a classifier, ``logits`` ``[B, num_classes]``.
  """
  out = {'pooled': pooled.astype(jnp.float32), 'tokens': tokens.astype(jnp.float32)}
  if module.num_classes:
    x = pooled
    if dropout_rate:
      x = nn.Dropout(dropout_rate, deterministic=not train)(x)
    head = nn.Dense(module.num_classes, dtype=module.dtype,
                    param_dtype=module.param_dtype, kernel_init=head_init,
                    name=head_name)
    out['logits'] = head(x).astype(jnp.float32)
  return out


class StochasticDepth(nn.Module):
  """torchvision's ``StochasticDepth(p, mode='row')``: in training, drops the
  whole residual branch of each sample with probability ``rate`` and scales the
  kept ones by ``1 / (1 - rate)``; identity in eval mode. Uses the ``'dropout'``
  RNG stream."""

  rate: float

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if not train or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = jax.random.bernoulli(self.make_rng('dropout'), keep, shape)
    return jnp.where(mask, x / keep, jnp.zeros_like(x))


Dtype = Any
