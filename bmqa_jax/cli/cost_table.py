r"""Prints the cost table of the image encoders (issue 3, item 5) as markdown.

    bmqa-cost-table [--image_size=224] [--names=resnet50,vit_b32]

Columns: parameters with a 1000-class head, GFLOPs of one eval forward pass
at ``--image_size`` from XLA's cost analysis (multiply-add = 2 FLOPs), and the
published numbers next to them: torchvision's ``num_params``/``_ops`` (read
from the installed torchvision's weight metadata, nothing downloaded; ``_ops``
counts multiply-adds, at the weights' own crop size) and, for
EfficientNet-Lite, TF's reference numbers.
"""

from absl import flags

from bmqa_jax.models import image
from bmqa_jax.models.image import costs

_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Square input side in pixels.")
_NAMES = flags.DEFINE_list("names", list(image.PAPER_NAMES), "Encoders to list.")

# EfficientNet-Lite: (params, G multiply-adds, resolution) of TF's lite builder
# as reported with the PyTorch port (github.com/d-li14/efficientnet-lite.pytorch).
_LITE_PUBLISHED = {
  "efficientnet_lite0": (4.652e6, 0.385, 224),
  "efficientnet_lite1": (5.417e6, 0.600, 240),
  "efficientnet_lite2": (6.092e6, 0.860, 260),
}
_TORCHVISION_NAMES = {"vit_b32": "vit_b_32", "vit_b16": "vit_b_16"}


def _published(name):
  """(params, G multiply-adds, resolution) or None."""
  if name in _LITE_PUBLISHED:
    return _LITE_PUBLISHED[name]
  try:
    import torchvision  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  try:
    weights = torchvision.models.get_model_weights(_TORCHVISION_NAMES.get(name, name)).DEFAULT
  except ValueError:
    return None
  return (weights.meta["num_params"], weights.meta["_ops"], weights.transforms().crop_size[0])


def main(argv):
  del argv
  size = _IMAGE_SIZE.value
  print(
    f"| encoder | params (M) | GFLOPs @{size} px (XLA) | published params (M) "
    "| published G mult-adds (px) |"
  )
  print("|---|---:|---:|---:|---:|")
  for name in _NAMES.value:
    params = costs.parameter_count(name)
    gflops = costs.forward_flops(name, size) / 1e9
    pub = _published(name)
    pub_cols = f"{pub[0] / 1e6:.2f} | {pub[1]:.3g} ({pub[2]})" if pub else "– | –"
    print(f"| {name} | {params / 1e6:.2f} | {gflops:.2f} | {pub_cols} |", flush=True)
