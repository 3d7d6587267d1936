"""The image-encoder registry and its contract (docs/interfaces.md, Image encoders), on the small
variants (same code as the paper models); no PyTorch needed. Parity with the
references is in test_image_parity.py."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bmqa_jax.models import image
from bmqa_jax.models.image import efficientnet
from bmqa_jax.models.image import layers
from bmqa_jax.models.image import ops

SIZES = {"vit_tiny": 32}  # others: 64 px
BATCH_NORM = {"resnet", "efficientnet"}


def test_registry_lists_every_paper_model_and_small_variant():
  assert set(image.names()) == (
    set(image.PAPER_NAMES) | set(image.SMALL_NAMES) | set(image.EXTRA_NAMES)
  )
  assert {image.family(n) for n in image.names()} == {
    "vgg",
    "resnet",
    "efficientnet",
    "vit",
    "convnext",
    "mobilenet",
    "alexnet",
  }
  with pytest.raises(KeyError, match="unknown image encoder"):
    image.create("resnet9000")
  with pytest.raises(TypeError, match="no field"):
    image.create("resnet_tiny", stochastic_depth_rate=0.1)


def _random_variables(abstract, seed=0):
  """Random variables of the right shapes, drawn in numpy: compiling
  ``model.init`` (a threefry hash per parameter) costs XLA:CPU more than all
  these tests; ``init`` itself is traced by ``jax.eval_shape``."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path[-1:])
    shape = leaf.shape
    if "'kernel'" in name:
      return rng.standard_normal(shape).astype(np.float32) / np.sqrt(np.prod(shape[:-1]))
    if "'var'" in name:
      return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if "'scale'" in name or "'layer_scale'" in name:
      return rng.uniform(0.5, 1.0, shape).astype(np.float32)
    return (0.1 * rng.standard_normal(shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, abstract)


@functools.lru_cache(maxsize=None)
def _init(name, num_classes=7):
  model = image.create(name, num_classes=num_classes)
  size = SIZES.get(name, 64)
  x = jax.random.normal(jax.random.key(1), (2, size, size, 3))
  abstract = jax.eval_shape(model.init, jax.random.key(0), x)
  return model, _random_variables(abstract), x


@pytest.mark.parametrize("name", image.SMALL_NAMES)
def test_outputs_follow_the_contract(name):
  model, variables, x = _init(name)
  has_bn = image.family(name) in BATCH_NORM
  assert set(variables) == ({"params", "batch_stats"} if has_bn else {"params"})

  @jax.jit  # one compilation for every mode
  def run(variables, x):
    out = model.apply(variables, x, train=False)
    plain = image.create(name).apply(variables, x)
    kw = {"mutable": ["batch_stats"]} if has_bn else {}
    train = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)}, **kw)
    return out, plain, train

  out, plain, train = run(variables, x)
  assert set(out) == {"pooled", "tokens", "logits"}
  assert out["pooled"].shape[0] == 2 and out["tokens"].shape[0] == 2
  assert out["logits"].shape == (2, 7)
  for v in out.values():
    assert v.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(v)))
  # What `pooled` is, in terms of `tokens`.
  if image.family(name) == "vit":
    np.testing.assert_allclose(out["pooled"], out["tokens"][:, 0], rtol=1e-6)
  elif image.family(name) in ("resnet", "efficientnet"):
    np.testing.assert_allclose(out["pooled"], out["tokens"].mean(axis=1), rtol=1e-5, atol=1e-6)
  # Without num_classes: no head, and the same pooled vector from the same variables.
  assert set(plain) == {"pooled", "tokens"}
  np.testing.assert_allclose(plain["pooled"], out["pooled"], rtol=1e-5, atol=1e-6)
  # Train mode: finite, and BatchNorm statistics move.
  if has_bn:
    train, updates = train
    old, new = jax.tree.leaves(variables["batch_stats"]), jax.tree.leaves(updates["batch_stats"])
    assert any(not np.allclose(a, b) for a, b in zip(old, new)), "batch stats not updated"
  assert bool(jnp.all(jnp.isfinite(train["pooled"])))


# One per kind of normalisation (BatchNorm, LayerNorm on maps, LayerNorm on tokens).
@pytest.mark.parametrize("name", ["resnet_tiny", "convnext_mini", "vit_tiny"])
def test_bfloat16_compute_gives_float32_outputs_close_to_float32(name):
  model, variables, x = _init(name)
  low = image.create(name, num_classes=7, dtype=jnp.bfloat16)
  out, low = jax.jit(lambda v, x: (model.apply(v, x), low.apply(v, x)))(variables, x)
  assert low["pooled"].dtype == jnp.float32 and low["logits"].dtype == jnp.float32
  err = float(jnp.max(jnp.abs(low["pooled"] - out["pooled"])))
  assert err <= 0.05 * float(jnp.max(jnp.abs(out["pooled"])))


def test_param_dtype():
  model = image.create("resnet_tiny", param_dtype=jnp.bfloat16)
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  assert {v.dtype for v in jax.tree.leaves(variables["params"])} == {jnp.dtype(jnp.bfloat16)}


def test_gradients_reach_every_parameter():
  model, variables, x = _init("resnet_tiny")

  def loss(params):
    out, _ = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
    return jnp.mean(out["logits"] ** 2)

  grads = jax.jit(jax.grad(loss))(variables["params"])
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert bool(jnp.any(g != 0)), f"no gradient for {jax.tree_util.keystr(path)}"


def test_stochastic_depth_drops_whole_samples_and_rescales():
  x = jnp.ones((4000, 3, 3, 2))
  sd = layers.StochasticDepth(0.25)
  np.testing.assert_array_equal(sd.apply({}, x, train=False), x)
  y = np.asarray(sd.apply({}, x, train=True, rngs={"dropout": jax.random.key(0)}))
  per_sample = y.reshape(4000, -1)
  assert np.all((per_sample == 0).all(1) | np.isclose(per_sample, 1 / 0.75).all(1))
  assert abs((per_sample[:, 0] == 0).mean() - 0.25) < 0.03  # ~4σ
  assert abs(per_sample.mean() - 1.0) < 0.05


def test_vit_refuses_other_image_sizes():
  model, variables, _ = _init("vit_tiny")
  with pytest.raises(ValueError, match="image_size=48"):
    model.apply(variables, jnp.zeros((1, 48, 48, 3)))


def test_lite_input_scaling_maps_imagenet_input_to_tf_pixels():
  pixels = np.array([0.0, 127.0, 255.0], np.float32)[:, None] * np.ones((1, 3), np.float32)
  normalised = (pixels / 255.0 - np.array(efficientnet.IMAGENET_MEAN)) / np.array(
    efficientnet.IMAGENET_STD
  )
  got = efficientnet._lite_input_scaling(jnp.asarray(normalised, jnp.float32))
  np.testing.assert_allclose(got, (pixels - 127.0) / 128.0, atol=1e-5)


def test_tf_same_padding_is_asymmetric_like_tensorflow():
  # 4×4 input, 3×3 stride-2: TF pads 0 before, 1 after; torch-style pads 1 and 1.
  assert efficientnet.conv_padding(3, tf_same=True) == "SAME"
  x = jnp.arange(16.0).reshape(1, 4, 4, 1)
  kernel = jnp.zeros((3, 3, 1, 1)).at[0, 0].set(1.0)  # picks the top-left tap
  same = jax.lax.conv_general_dilated(
    x, kernel, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  np.testing.assert_array_equal(same[0, :, :, 0], [[0.0, 2.0], [8.0, 10.0]])


@pytest.mark.parametrize(
  "name, width, tokens",
  [
    ("resnet50", 2048, 49),
    ("vgg19", 4096, 49),
    ("efficientnet_b0", 1280, 49),
    ("efficientnet_lite0", 1280, 49),
    ("vit_b16", 768, 197),
    ("convnext_tiny", 768, 49),
  ],
)
def test_paper_model_output_shapes_at_224(name, width, tokens):
  out = jax.eval_shape(
    lambda x: image.create(name).init_with_output(jax.random.key(0), x)[0],
    jnp.zeros((1, 224, 224, 3)),
  )
  assert out["pooled"].shape == (1, width)
  assert out["tokens"].shape[:2] == (1, tokens)


@pytest.mark.parametrize(
  "size, channels, out, kernel, stride, padding, groups",
  [
    (9, 4, 6, 3, 1, "SAME", 1),  # ResNet/VGG 3×3
    (10, 4, 6, 3, 2, ((1, 1), (1, 1)), 1),  # strided 3×3
    (11, 3, 5, 7, 2, ((3, 3), (3, 3)), 1),  # ResNet stem
    (8, 4, 6, 1, 2, ((0, 0), (0, 0)), 1),  # downsample 1×1/2
    (9, 6, 6, 5, 2, "SAME", 6),  # EfficientNet depthwise, TF padding
    (8, 6, 6, 7, 1, ((3, 3), (3, 3)), 6),  # ConvNeXt depthwise
    (8, 5, 5, 3, 2, ((0, 1), (0, 1)), 5),  # depthwise/2, uneven padding
    (10, 4, 4, 5, 2, ((2, 2), (2, 2)), 4),  # depthwise/2, a row never read
    (16, 3, 8, 4, 4, "VALID", 1),  # patchify stem (ViT, ConvNeXt)
    (8, 4, 6, 1, 1, "VALID", 1),  # bottleneck 1×1
    (9, 3, 4, 1, 2, ((1, 0), (0, 1)), 1),  # padded 1×1/2
    (8, 4, 6, 3, 1, "SAME", 2),  # grouped, not depthwise: XLA's
  ],
)
def test_cpu_convolution_and_gradients_equal_xla(
  size, channels, out, kernel, stride, padding, groups
):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, size, size + 1, channels)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((kernel, kernel, channels // groups, out)), jnp.float32)

  def conv(impl, x, w):
    return impl(
      x,
      w,
      (stride, stride),
      padding,
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=groups,
    )

  y, ref_vjp = jax.vjp(functools.partial(conv, jax.lax.conv_general_dilated), x, w)
  cotangent = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
  got_y, got_vjp = jax.vjp(functools.partial(conv, ops.CPU.conv_general_dilated), x, w)
  np.testing.assert_allclose(got_y, y, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(y))))
  for got, want in zip(got_vjp(cotangent), ref_vjp(cotangent)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(want))))


def test_ops_follow_the_backend_and_programs_hold_no_custom_call():
  """The CPU forms on the CPU backend, XLA's own elsewhere; either way a
  model's training program is plain XLA (no custom call), which XLA's
  persistent compilation cache can store."""
  assert ops.for_backend() is ops.CPU and jax.default_backend() == "cpu"
  assert ops.for_backend("gpu") is ops.XLA and ops.for_backend("tpu") is ops.XLA
  for name in ("resnet_tiny", "efficientnet_tiny", "convnext_mini", "vgg_tiny"):
    model = image.create(name, num_classes=3)
    x = jnp.ones((2, 32, 32, 3))
    variables = model.init(jax.random.key(0), x)

    def loss(params, variables=variables, model=model):
      out, _ = model.apply(
        {**variables, "params": params},
        x,
        train=True,
        mutable=["batch_stats"],
        rngs={"dropout": jax.random.key(1)},
      )
      return out["logits"].sum()

    text = jax.jit(jax.grad(loss)).lower(variables["params"]).as_text()
    assert "custom_call" not in text, name


@pytest.mark.parametrize(
  "window, stride, padding, relu",
  [
    (3, 2, ((1, 1), (1, 1)), True),  # ResNet stem, after a ReLU: many tied zeros
    (2, 2, "VALID", True),  # VGG
    (3, 2, "VALID", False),  # AlexNet
    (3, 2, "SAME", False),  # padding by name
  ],
)
def test_cpu_max_pool_and_gradient_equal_xla(window, stride, padding, relu):
  """Ties go to the first tap in row-major order, as in XLA's select_and_scatter
  (and torch's max_pool2d)."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 13, 12, 5)).astype(np.float32)
  x = jnp.asarray(np.maximum(x, 0) if relu else x)
  xla = lambda x: nn.max_pool(x, (window, window), (stride, stride), padding)  # noqa: E731
  ours = lambda x: ops.CPU.max_pool(  # noqa: E731
    x, (window, window), strides=(stride, stride), padding=padding
  )
  y, ref_vjp = jax.vjp(xla, x)
  got_y, got_vjp = jax.vjp(ours, x)
  np.testing.assert_array_equal(got_y, y)
  g = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
  np.testing.assert_allclose(got_vjp(g)[0], ref_vjp(g)[0], rtol=0, atol=1e-6)
  assert ops.XLA.max_pool is nn.max_pool
