"""Parity of every image-encoder family with its PyTorch reference (issue 3).

torchvision's model (or, for EfficientNet-Lite, the ``efficientnet_lite_pytorch``
package the pretrained files were made for) gets random weights and random
BatchNorm statistics, is converted with ``bmqa_jax.convert.from_torch``, and
must give the same ``pooled``, ``logits``, ``tokens`` and per-block outputs on
the same input in float32 eval mode: max |diff| ≤ 1e-4 · max |reference|.
Block outputs are compared first so that a mismatch is located.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from bmqa_jax import convert  # noqa: E402
from bmqa_jax.models import image  # noqa: E402
from bmqa_jax.models.image.efficientnet import _lite_input_scaling  # noqa: E402

RTOL = 1e-4
NUM_CLASSES = 10


def _randomise(model, seed=0):
  """Random BN statistics/affines, layer scales and heads so no part is trivial."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
        m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
        m.weight.copy_(0.5 + torch.rand(m.num_features, generator=g))
        m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
    for name, p in model.named_parameters():
      if name.endswith("layer_scale"):
        p.copy_(0.5 + 0.5 * torch.rand(p.shape, generator=g))
      elif name.startswith("heads.") or name.endswith(("class_token", "in_proj_bias")):
        p.copy_(0.05 * torch.randn(p.shape, generator=g))
  return model.eval()


def _torch_vit_b32(image_size):
  from torchvision.models.vision_transformer import VisionTransformer

  return VisionTransformer(image_size, 32, 12, 12, 768, 3072, num_classes=NUM_CLASSES)


def _torch_lite0():
  lite = pytest.importorskip("efficientnet_lite_pytorch")
  # image_size=None: dynamic TF "SAME" padding, valid at any input size.
  return lite.EfficientNet.from_name("efficientnet-lite0", image_size=None, num_classes=NUM_CLASSES)


def _nchw_to_nhwc(t):
  a = t.detach().numpy()
  return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a


# name, torch builder, input size, create kwargs, torch module of the last spatial map,
# {Flax block path: torch module name} for the intermediate comparison.
CASES = {
  "resnet18": (
    lambda: torchvision.models.resnet18(num_classes=NUM_CLASSES),
    64,
    {},
    "layer4",
    {f"layer{i}_{j}": f"layer{i}.{j}" for i in range(1, 5) for j in range(2)},
  ),
  "resnet50": (
    lambda: torchvision.models.resnet50(num_classes=NUM_CLASSES),
    64,
    {},
    "layer4",
    {
      "layer1_0": "layer1.0",
      "layer2_3": "layer2.3",
      "layer3_5": "layer3.5",
      "layer4_2": "layer4.2",
    },
  ),
  "vgg19": (
    lambda: torchvision.models.vgg19(num_classes=NUM_CLASSES),
    64,
    {},
    "features",
    {
      "features_0": "features.0",
      "features_16": "features.16",
      "features_34": "features.34",
      "classifier_0": "classifier.0",
    },
  ),
  "efficientnet_b0": (
    lambda: torchvision.models.efficientnet_b0(num_classes=NUM_CLASSES),
    66,
    {},
    "features",
    {
      "stem_conv": "features.0.0",
      "stage0_block0": "features.1.0",
      "stage2_block1": "features.3.1",
      "stage5_block3": "features.6.3",
      "head_conv": "features.8.0",
    },
  ),
  "efficientnet_lite0": (
    _torch_lite0,
    66,
    {},
    "_bn1",
    {
      "stem_conv": "_conv_stem",
      "stage0_block0": "_blocks.0",
      "stage2_block1": "_blocks.4",
      "stage5_block3": "_blocks.14",
      "head_conv": "_conv_head",
    },
  ),
  "vit_b32": (
    lambda: _torch_vit_b32(64),
    64,
    {"image_size": 64},
    "encoder",
    {f"encoder_layer_{i}": f"encoder.layers.encoder_layer_{i}" for i in (0, 5, 11)},
  ),
  "convnext_tiny": (
    lambda: torchvision.models.convnext_tiny(num_classes=NUM_CLASSES),
    64,
    {},
    "features",
    {
      "stem_norm": "features.0.1",
      "stage0_block2": "features.1.2",
      "downsample2_conv": "features.4.1",
      "stage2_block8": "features.5.8",
      "stage3_block2": "features.7.2",
    },
  ),
}


def _close(ours, ref, what):
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  assert ours.shape == ref.shape, f"{what}: shape {ours.shape} vs reference {ref.shape}"
  err = np.max(np.abs(ours - ref))
  bound = RTOL * np.max(np.abs(ref))
  assert err <= bound, f"{what}: max|diff| {err:.3g} > {bound:.3g} (1e-4·max|ref|)"


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_reference(name):
  build, size, kwargs, last_map, blocks = CASES[name]
  torch.manual_seed(0)
  ref_model = _randomise(build())
  x = np.random.default_rng(0).standard_normal((2, size, size, 3)).astype(np.float32)

  captured = {}
  hooks = [
    ref_model.get_submodule(t).register_forward_hook(
      lambda _m, _i, out, key=key: captured.__setitem__(key, out.clone())
    )  # before in-place ReLUs
    for key, t in list(blocks.items()) + [("__tokens__", last_map)]
  ]
  penultimate = {}
  head = {
    "vgg19": "classifier.6",
    "vit_b32": "heads.head",
    "efficientnet_lite0": "_fc",
    "convnext_tiny": "classifier.2",
    "efficientnet_b0": "classifier.1",
  }.get(name, "fc")
  hooks.append(
    ref_model.get_submodule(head).register_forward_hook(
      lambda _m, inp, _o: penultimate.__setitem__("pooled", inp[0])
    )
  )
  # The Lite models take (255·x − 127) / 128 inputs; ours rescale ImageNet-normalised
  # ones internally, so the reference gets the rescaled image.
  x_ref = np.array(_lite_input_scaling(x)) if "lite" in name else x
  with torch.no_grad():
    ref_logits = ref_model(torch.from_numpy(x_ref.transpose(0, 3, 1, 2))).numpy()
  for h in hooks:
    h.remove()

  state = {k: v.detach().numpy() for k, v in ref_model.state_dict().items()}
  variables = convert.from_torch(name, state, **kwargs)
  model = image.create(name, num_classes=NUM_CLASSES, **kwargs)
  apply = jax.jit(
    functools.partial(model.apply, capture_intermediates=True, mutable=["intermediates"])
  )
  out, inter = apply(variables, jnp.asarray(x))
  inter = inter["intermediates"]

  for flax_path, torch_name in blocks.items():
    node = inter
    for part in flax_path.split("/"):
      node = node[part]
    _close(
      node["__call__"][0],
      _nchw_to_nhwc(captured[flax_path]),
      f"{name} block {flax_path} ({torch_name})",
    )

  ref_tokens = _nchw_to_nhwc(captured["__tokens__"])
  ref_tokens = ref_tokens.reshape(ref_tokens.shape[0], -1, ref_tokens.shape[-1])
  if name == "efficientnet_lite0":  # hook is on the BN; the reference applies ReLU6 after it
    ref_tokens = np.clip(ref_tokens, 0, 6)
  _close(out["tokens"], ref_tokens, f"{name} tokens")
  _close(out["pooled"], penultimate["pooled"].numpy(), f"{name} pooled")
  _close(out["logits"], ref_logits, f"{name} logits")


def test_adaptive_avg_pool_matches_torch():
  from bmqa_jax.models.image.vgg import adaptive_avg_pool

  x = np.random.default_rng(1).standard_normal((2, 10, 13, 4)).astype(np.float32)
  ref = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x.transpose(0, 3, 1, 2)), 7)
  _close(adaptive_avg_pool(jnp.asarray(x), 7), _nchw_to_nhwc(ref), "adaptive_avg_pool")


_TORCHVISION = {"vit_b32": "vit_b_32", "vit_b16": "vit_b_16"}


@pytest.mark.parametrize("name", image.PAPER_NAMES)
def test_parameter_count_equals_reference(name):
  with torch.device("meta"):
    if name.startswith("efficientnet_lite"):
      lite = pytest.importorskip("efficientnet_lite_pytorch")
      ref_model = lite.EfficientNet.from_name(name.replace("_", "-"))
    else:
      ref_model = getattr(torchvision.models, _TORCHVISION.get(name, name))()
  ref = sum(p.numel() for p in ref_model.parameters())
  abstract = convert.expected_variables(name, num_classes=1000)
  ours = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(abstract["params"]))
  assert ours == ref


@pytest.mark.parametrize("shape", [(2, 9, 9, 128), (4, 7)])
def test_gelu_and_its_gradient_match_torch(shape):
  """layers.gelu (erf, not jax.nn.gelu's slower erfc) against torch.nn.GELU,
  forward and backward, in float32, on values out to the tails (±9)."""
  from bmqa_jax.models.image import layers

  rng = np.random.default_rng(3)
  x = (3.0 * rng.standard_normal(shape)).astype(np.float32)
  g = rng.standard_normal(shape).astype(np.float32)
  tx = torch.from_numpy(x).requires_grad_()
  y_ref = torch.nn.GELU()(tx)
  y_ref.backward(torch.from_numpy(g))
  y, vjp = jax.vjp(layers.gelu, jnp.asarray(x))
  _close(y, y_ref.detach().numpy(), "GELU")
  _close(vjp(jnp.asarray(g))[0], tx.grad.numpy(), "GELU dx")
