"""Tests for bmqa_jax.baselines: NSS building blocks, BRISQUE, NIQE, luminance,
the registry and the manifest harness.

Agreement with independent implementations (each test skips when its package
is missing):
  * BRISQUE features vs piq (torch port of the MATLAB release);
  * BRISQUE scores vs the PyPI package `brisque` (its own features and SVR);
  * NIQE scores vs basicsr's numpy port (read from the installed files).
Real images: scikit-image's bundled photos, and BIQ2021 low-light photos from
../shared/data when present.
"""

import glob
import importlib.util
import json
import os
import runpy
import sys
import types

import numpy as np
import pytest
import scipy.ndimage
import scipy.stats
from PIL import Image

from bmqa_jax import baselines
from bmqa_jax.baselines import brisque as brisque_lib
from bmqa_jax.baselines import harness
from bmqa_jax.baselines import luminance as luminance_lib
from bmqa_jax.baselines import niqe as niqe_lib
from bmqa_jax.baselines import nss
from bmqa_jax.baselines import svr as svr_lib
from bmqa_jax.data.image_io import read_image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIQ = os.path.join(REPO, "..", "shared", "data", "biq2021_lowlight")
SKIMAGE_DATA = os.path.dirname(importlib.util.find_spec("skimage.data").origin)


def _photo(name, size=None):
  img = read_image(os.path.join(SKIMAGE_DATA, name))
  if size is not None:
    h, w = size
    y0, x0 = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
    img = img[y0 : y0 + h, x0 : x0 + w]
  return img


def _blur(img, sigma):
  if sigma == 0:
    return img
  return np.stack([scipy.ndimage.gaussian_filter(img[..., c], sigma) for c in range(3)], -1)


def _noise(img, std, seed=0):
  rng = np.random.default_rng(seed)
  return np.clip(img + rng.normal(0, std, img.shape), 0, 1).astype(np.float32)


def _biq_images(count):
  files = sorted(glob.glob(os.path.join(BIQ, "images", "*.jpg")))
  if not files:
    pytest.skip("BIQ2021 low-light data not present")
  step = max(1, len(files) // count)
  return [read_image(f) for f in files[::step][:count]]


# --------------------------------------------------------------------------
# NSS building blocks
# --------------------------------------------------------------------------


def test_gaussian_window_is_fspecial():
  w = nss.gaussian_window(7, 7 / 6)
  x = np.arange(7) - 3
  ref = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * (7 / 6) ** 2))
  np.testing.assert_allclose(w, ref / ref.sum(), rtol=1e-12)


def test_matlab_rgb2gray_rounds_like_matlab():
  img = np.array([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0]]])
  # MATLAB: rgb2gray(uint8([255 0 0; 0 255 0; 0 0 255; 255 255 255])) = 76, 150, 29, 255.
  np.testing.assert_array_equal(nss.matlab_rgb2gray(img), [[76, 150, 29, 255]])


def test_mscn_flat_region_is_exactly_zero():
  grey = np.full((20, 20), 37.0)
  grey[5:10, 5:10] = 90.0
  coeffs, sd = nss.mscn(grey, padding="replicate")
  assert np.all(coeffs[15:, 15:] == 0.0) and np.all(sd[15:, 15:] < 1e-6)
  assert np.abs(coeffs[5:10, 5:10]).max() > 0.1


def test_imresize_hand_checks():
  const = np.full((10, 14), 7.5)
  np.testing.assert_allclose(nss.matlab_imresize(const, 0.5), np.full((5, 7), 7.5), rtol=1e-12)
  # A linear ramp is reproduced exactly away from the border: output pixel x
  # (1-based) samples the input at u = 2x - 0.5.
  ramp = np.tile(np.arange(40, dtype=float), (6, 1))
  out = nss.matlab_imresize(ramp, 0.5)
  assert out.shape == (3, 20)
  x = np.arange(1, 21)
  np.testing.assert_allclose(out[1, 3:-3], (2 * x - 0.5 - 1)[3:-3], atol=1e-9)
  assert nss.matlab_imresize(np.zeros((7, 9)), 0.5).shape == (4, 5)  # ceil


def test_imresize_matches_piq():
  torch = pytest.importorskip("torch")
  resize = pytest.importorskip("piq.functional.resize")
  img = np.random.default_rng(0).uniform(0, 255, (37, 50))
  ref = resize.imresize(torch.from_numpy(img)[None, None], scale=0.5).numpy()[0, 0]
  np.testing.assert_allclose(nss.matlab_imresize(img, 0.5), ref, atol=1e-4)


@pytest.mark.parametrize("alpha", [0.6, 1.0, 2.0, 3.0])
def test_ggd_fit_recovers_shape(alpha):
  x = scipy.stats.gennorm.rvs(alpha, scale=0.7, size=200_000, random_state=1)
  a, sigma = nss.fit_ggd(x)
  assert a == pytest.approx(alpha, rel=0.04)
  assert sigma == pytest.approx(np.sqrt(np.mean(x**2)), rel=1e-9)


def test_aggd_fit_recovers_shape_and_sides():
  rng = np.random.default_rng(2)
  mag = np.abs(scipy.stats.gennorm.rvs(1.5, size=200_000, random_state=rng))
  # An AGGD with scales 0.5 (left) and 1.5 (right) puts mass 0.5 / (0.5 + 1.5) left.
  side = rng.random(mag.size) < 0.25
  x = np.where(side, -0.5 * mag, 1.5 * mag)
  a, left, right = nss.fit_aggd(x)
  assert a == pytest.approx(1.5, rel=0.05)
  assert left == pytest.approx(0.5 * np.sqrt(np.mean(mag[side] ** 2)), rel=1e-9)
  assert right == pytest.approx(1.5 * np.sqrt(np.mean(mag[~side] ** 2)), rel=1e-9)


def test_degenerate_statistics_raise():
  with pytest.raises(nss.DegenerateStatisticsError):
    nss.fit_ggd(np.zeros(100))
  with pytest.raises(nss.DegenerateStatisticsError, match="negative and positive"):
    nss.fit_aggd(np.abs(np.random.default_rng(0).normal(size=100)))
  flat = np.full((64, 64, 3), 0.2, np.float32)
  with pytest.raises(nss.DegenerateStatisticsError):
    brisque_lib.brisque_features(flat)


# --------------------------------------------------------------------------
# BRISQUE
# --------------------------------------------------------------------------


def _piq_nss_features(grey):
  """piq's port of the per-scale BRISQUE statistics on a given grey image (0..255)."""
  torch = pytest.importorskip("torch")
  pytest.importorskip("piq")
  from piq.brisque import _natural_scene_statistics  # pylint: disable=import-outside-toplevel

  return _natural_scene_statistics(torch.from_numpy(grey)[None, None]).numpy().ravel()


def _piq_brisque_features(img):
  """piq's full feature pipeline (its own grey conversion and resize)."""
  torch = pytest.importorskip("torch")
  pytest.importorskip("piq")
  from piq.brisque import _natural_scene_statistics  # pylint: disable=import-outside-toplevel
  from piq.functional import resize, rgb2yiq  # pylint: disable=import-outside-toplevel

  x = torch.from_numpy(img.astype(np.float64)).permute(2, 0, 1)[None] * 255
  x = torch.round(rgb2yiq(x)[:, :1])
  feats = []
  for _ in range(2):
    feats.append(_natural_scene_statistics(x))
    x = resize.imresize(x, scale=0.5)
  return torch.cat(feats, -1).numpy().ravel()


def _assert_nss_features_close(ours, ref, rtol):
  """Shapes (alpha) within one 0.001 grid step; variances to ``rtol``; the AGGD
  mean depends on alpha, so it is compared tightly only where the shapes agree."""
  assert ours.shape == ref.shape
  for start in range(0, ours.size, 18):
    o, r = ours[start : start + 18], ref[start : start + 18]
    assert abs(o[0] - r[0]) <= 0.0011
    np.testing.assert_allclose(o[1], r[1], rtol=rtol)
    for g in range(2, 18, 4):
      alpha_o, mean_o, lvar_o, rvar_o = o[g : g + 4]
      alpha_r, mean_r, lvar_r, rvar_r = r[g : g + 4]
      assert abs(alpha_o - alpha_r) <= 0.0011
      np.testing.assert_allclose([lvar_o, rvar_o], [lvar_r, rvar_r], rtol=rtol)
      # The mean is a difference of the two sides' scales: its error is relative
      # to the scales, not to itself.
      mean_tol = rtol if alpha_o == pytest.approx(alpha_r, abs=1e-9) else 5e-3
      scale = np.sqrt(max(lvar_r, rvar_r))
      np.testing.assert_allclose(mean_o, mean_r, rtol=0, atol=mean_tol * scale)


@pytest.mark.parametrize("name", ["chelsea.png", "coffee.png"])
def test_brisque_nss_steps_match_piq(name):
  # Photos without flat regions: there, piq's filter leaves +-1e-14 where we have
  # exact zeros (nss.FLAT_TOLERANCE), which moves coefficients between AGGD sides.
  img = _photo(name, (192, 256))
  ours = brisque_lib.brisque_features(img)
  grey = nss.matlab_rgb2gray(img)
  ref = np.concatenate([_piq_nss_features(grey), _piq_nss_features(nss.matlab_imresize(grey, 0.5))])
  _assert_nss_features_close(ours, ref, rtol=1e-8)


@pytest.mark.parametrize("name", ["astronaut.png", "rocket.jpg"])
def test_brisque_features_match_piq(name):
  # The whole pipeline, with piq's own grey weights (YIQ 0.299/0.587/0.114 vs
  # MATLAB's 0.2989/0.5870/0.1140, which round some pixels differently) and resize.
  img = _photo(name, (192, 256))
  _assert_nss_features_close(
    brisque_lib.brisque_features(img), _piq_brisque_features(img), rtol=2e-3
  )


def _package_brisque():
  """The PyPI `brisque` package's own pipeline (features + its LIVE SVR)."""
  pytest.importorskip("cv2")
  try:
    from brisque import BRISQUE  # pylint: disable=import-outside-toplevel
  except Exception as e:  # pylint: disable=broad-except
    pytest.skip(f"PyPI package `brisque` not usable: {e}")
  import cv2  # pylint: disable=import-outside-toplevel
  import skimage.color  # pylint: disable=import-outside-toplevel

  pkg = BRISQUE(url=False)

  def score(img01):
    # BRISQUE.score() itself fails on numpy >= 2.3 (float() of 1-element arrays):
    # same steps, with its features flattened to floats.
    grey = skimage.color.rgb2gray(np.round(img01 * 255).astype(np.uint8))
    f1 = pkg.calculate_brisque_features(grey, kernel_size=7, sigma=7 / 6)
    down = cv2.resize(grey, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_CUBIC)
    f2 = pkg.calculate_brisque_features(down, kernel_size=7, sigma=7 / 6)
    return pkg.calculate_image_quality_score(
      [float(np.ravel(v)[0]) for v in np.concatenate([f1, f2])]
    )

  return score


def _distortion_ladder():
  base = _photo("astronaut.png", (192, 192))
  coffee = _photo("coffee.png", (192, 192))
  return (
    [_blur(base, s) for s in (0, 1, 2, 3)]
    + [_noise(base, s) for s in (0.03, 0.08)]
    + [_blur(coffee, s) for s in (0, 1.5, 3)]
    + [_noise(coffee, 0.05)]
  )


def test_brisque_live_agrees_with_pypi_brisque():
  reference = _package_brisque()
  ours = baselines.create("brisque")
  assert not ours.higher_is_better and ours.score_range == (0.0, 100.0)
  images = _distortion_ladder()
  a = np.array([ours.score(im) for im in images])
  b = np.array([reference(im) for im in images])
  assert scipy.stats.spearmanr(a, b).statistic > 0.9
  assert np.median(np.abs(a - b)) < 10.0
  # Blur makes BRISQUE worse (higher), as in the paper's Fig. 2.
  assert a[0] < a[2] < a[3]


def test_brisque_live_agrees_with_pypi_brisque_on_biq():
  reference = _package_brisque()
  images = [im[:256, :256] for im in _biq_images(8)]
  ours = baselines.create("brisque")
  a = np.array([ours.score(im) for im in images])
  b = np.array([reference(im) for im in images])
  assert scipy.stats.spearmanr(a, b).statistic > 0.85


def test_brisque_create_without_model_explains(monkeypatch):
  monkeypatch.setattr(brisque_lib, "PACKAGED_MODELS", (("no_such_pkg_xyz", "a", "b"),))
  with pytest.raises(FileNotFoundError, match="Brisque.fit"):
    baselines.create("brisque")
  with pytest.raises(ValueError, match="both"):
    baselines.create("brisque", model="x.txt")


def test_brisque_fitted_regressor_higher_is_better():
  images = _distortion_ladder()
  feats = np.stack([brisque_lib.brisque_features(im) for im in images])
  quality = np.array([1.0, 0.8, 0.6, 0.4, 0.5, 0.3, 0.9, 0.6, 0.35, 0.5])
  model = brisque_lib.Brisque.fit(
    feats, quality, hparams=svr_lib.SvrHyperparameters(c=10.0, gamma=0.05, epsilon=0.01)
  )
  assert model.higher_is_better
  pred = model.score_features(feats)
  assert scipy.stats.spearmanr(pred, quality).statistic > 0.9
  assert model.score(images[0]) == pytest.approx(pred[0])


# --------------------------------------------------------------------------
# SVR
# --------------------------------------------------------------------------


def test_libsvm_model_reader_by_hand(tmp_path):
  (tmp_path / "m.txt").write_text(
    "svm_type epsilon_svr\nkernel_type rbf\ngamma 0.5\nnr_class 2\ntotal_sv 2\n"
    "rho -1.5\nSV\n2 1:1 2:0\n-0.5 2:2\n"
  )
  model = svr_lib.load_libsvm_model(tmp_path / "m.txt")
  x = np.array([1.0, 1.0])
  expected = 2 * np.exp(-0.5 * 1.0) - 0.5 * np.exp(-0.5 * 2.0) + 1.5
  assert model(x)[0] == pytest.approx(expected)
  (tmp_path / "r.txt").write_text("x\n-1 1\n1 0 2\n2 -1 1\n")
  scaler = svr_lib.load_svm_scale_range(tmp_path / "r.txt")
  np.testing.assert_allclose(scaler(np.array([1.0, 0.0])), [0.0, 0.0])
  np.testing.assert_allclose(scaler(np.array([2.0, -1.0])), [1.0, -1.0])
  (tmp_path / "bad.txt").write_text("svm_type c_svc\nkernel_type rbf\nSV\n1 1:1\n")
  with pytest.raises(ValueError, match="regression"):
    svr_lib.load_libsvm_model(tmp_path / "bad.txt")


def test_fit_svr_matches_sklearn_predict():
  pytest.importorskip("sklearn")
  from sklearn.svm import SVR  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(0)
  x = rng.normal(size=(60, 5))
  y = np.tanh(x[:, 0]) + 0.1 * x[:, 1]
  hp = svr_lib.SvrHyperparameters(c=3.0, gamma=0.2, epsilon=0.05)
  scaler, model = svr_lib.fit_svr(x, y, hp)
  ref = SVR(kernel="rbf", C=3.0, gamma=0.2, epsilon=0.05).fit(scaler(x), y)
  xt = rng.normal(size=(10, 5))
  np.testing.assert_allclose(model(scaler(xt)), ref.predict(scaler(xt)), rtol=1e-9, atol=1e-12)
  hp2, cv = svr_lib.select_svr_hyperparameters(
    x,
    y,
    [str(i % 6) for i in range(60)],
    svr_lib.SvrGrid(c=(0.1, 10.0), gamma=(0.2,), epsilon=(0.05,), folds=3),
  )
  assert hp2.c in (0.1, 10.0) and cv > 0.5


# --------------------------------------------------------------------------
# NIQE
# --------------------------------------------------------------------------


def _load_basicsr_niqe(monkeypatch):
  """basicsr's NIQE functions, loaded from its installed files without running
  basicsr/__init__.py (which needs its full torch training stack)."""
  pytest.importorskip("torch")
  spec = importlib.util.find_spec("basicsr")
  if spec is None:
    pytest.skip("basicsr not installed (pip install --no-deps basicsr==1.4.2)")
  root = spec.submodule_search_locations[0]
  for name in ("basicsr", "basicsr.metrics", "basicsr.utils"):
    mod = types.ModuleType(name)
    mod.__path__ = []
    monkeypatch.setitem(sys.modules, name, mod)
  registry = types.ModuleType("basicsr.utils.registry")
  registry.METRIC_REGISTRY = types.SimpleNamespace(register=lambda: lambda f: f)
  monkeypatch.setitem(sys.modules, "basicsr.utils.registry", registry)
  util = types.ModuleType("basicsr.metrics.metric_util")
  util.reorder_image = util.to_y_channel = None
  monkeypatch.setitem(sys.modules, "basicsr.metrics.metric_util", util)

  def load(name, rel):
    s = importlib.util.spec_from_file_location(name, os.path.join(root, rel))
    mod = importlib.util.module_from_spec(s)
    monkeypatch.setitem(sys.modules, name, mod)
    s.loader.exec_module(mod)
    return mod

  load("basicsr.utils.matlab_functions", "utils/matlab_functions.py")
  ref = load("basicsr.metrics.niqe", "metrics/niqe.py")
  params = np.load(os.path.join(root, "metrics", "niqe_pris_params.npz"))

  def score(img01):
    grey = nss.matlab_rgb2gray(img01)
    # basicsr resizes in float32; give it the float64 MATLAB resize so that the
    # comparison checks the NIQE steps, not float32 rounding.
    monkeypatch.setattr(
      ref, "imresize", lambda x, scale, antialiasing: nss.matlab_imresize(x, scale)
    )
    return ref.niqe(
      grey, params["mu_pris_param"], params["cov_pris_param"], params["gaussian_window"]
    )

  return score


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # basicsr's scipy import
@pytest.mark.parametrize("name", ["astronaut.png", "coffee.png", "rocket.jpg", "camera.png"])
def test_niqe_matches_basicsr(name, monkeypatch):
  ours = baselines.create("niqe", pristine="live") if niqe_lib.find_packaged_model() else None
  reference = _load_basicsr_niqe(monkeypatch)
  img = _photo(name, (192, 288))
  assert not ours.higher_is_better
  with np.errstate(all="ignore"):
    expected = reference(img)
  assert ours.score(img) == pytest.approx(expected, rel=2e-3)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_niqe_ranks_like_basicsr_on_biq(monkeypatch):
  images = [im[:288, :288] for im in _biq_images(8)]
  ours = baselines.create("niqe", pristine="live") if niqe_lib.find_packaged_model() else None
  reference = _load_basicsr_niqe(monkeypatch)
  with np.errstate(all="ignore"):
    b = np.array([reference(im) for im in images])
  a = np.array([ours.score(im) for im in images])
  # Flat (clipped-black) regions: basicsr's filter noise flips coefficient signs.
  assert scipy.stats.spearmanr(a, b).statistic > 0.9
  assert np.median(np.abs(a - b)) < 0.1


def test_niqe_pristine_fit_save_load_and_blur(tmp_path):
  photos = [
    _photo(n, (192, 288))
    for n in ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png")
  ]
  model = niqe_lib.NiqePristineModel.fit(photos, source="test")
  assert model.mean.shape == (36,) and model.cov.shape == (36, 36)
  np.testing.assert_allclose(model.cov, model.cov.T)
  model.save(tmp_path / "p.npz")
  loaded = niqe_lib.NiqePristineModel.load(tmp_path / "p.npz")
  np.testing.assert_array_equal(loaded.mean, model.mean)
  q = niqe_lib.Niqe(loaded)
  sharp = _photo("astronaut.png", (192, 288))
  assert q.score(sharp) < q.score(_blur(sharp, 2.5))
  with pytest.raises(ValueError, match="pristine must be"):
    niqe_lib.NiqePristineModel.resolve(str(tmp_path / "missing"))
  with pytest.raises(ValueError, match="at least 96x96"):
    q.score(np.zeros((50, 200, 3), np.float32))
  with pytest.raises(nss.DegenerateStatisticsError):
    q.score(np.full((192, 192, 3), 0.3, np.float32))


# --------------------------------------------------------------------------
# Luminance, registry
# --------------------------------------------------------------------------


def test_luminance_hand_value():
  img = np.zeros((2, 2, 3), np.float32)
  img[0, 0] = [1, 0, 0]
  img[1, 1] = [0, 0.5, 1]
  expected = (0.299 + 0.587 * 0.5 + 0.114) / 4
  assert luminance_lib.mean_luma(img) == pytest.approx(expected)
  b = baselines.create("luminance")
  assert b.higher_is_better and b.score_range == (0.0, 1.0)
  assert b.score(img) == pytest.approx(expected)
  with pytest.raises(ValueError, match="shape"):
    b.score(np.zeros((2, 2, 4)))


def test_registry():
  assert baselines.names() == ["luminance", "brisque", "niqe"]
  with pytest.raises(ValueError, match="unknown baseline"):
    baselines.create("psnr")


# --------------------------------------------------------------------------
# Harness and launch script
# --------------------------------------------------------------------------


def _write_manifest(tmp_path, n_train=12, n_val=8):
  rows = ["image,mos,scene,split,device"]
  base = _photo("astronaut.png", (200, 200))
  rng = np.random.default_rng(0)
  for i in range(n_train + n_val):
    blur, gain = rng.uniform(0, 3), rng.uniform(0.2, 1.0)
    img = np.clip(_blur(base, blur) * gain, 0, 1)
    name = f"img {i}.png"
    Image.fromarray(np.round(img * 255).astype(np.uint8)).save(tmp_path / name)
    mos = float(np.clip(0.5 * gain + 0.5 * (1 - blur / 3), 0, 1))
    split = "train" if i < n_train else "val"
    rows.append(f"{name},{mos:.4f},s{i},{split},{'phone' if i % 2 else 'dslr'}")
  (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
  rows.append("broken.jpg,0.5,sb,val,phone")
  (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
  return str(tmp_path / "m.csv")


def test_harness_end_to_end(tmp_path):
  manifest = _write_manifest(tmp_path)
  cfg = harness.HarnessConfig(
    split="val",
    baselines=("luminance", "brisque"),
    progress=False,
    svr_grid=svr_lib.SvrGrid(c=(10.0,), gamma=(0.05,), epsilon=(0.01,), folds=3),
  )
  logs = []
  result = harness.evaluate_manifest(manifest, cfg, log=logs.append)
  lum = result["baselines"]["luminance"]
  assert lum["overall"]["n"] == 8 and len(lum["failures"]) == 1
  assert "broken.jpg" in lum["failures"][0][0]
  assert any("broken.jpg" in line for line in logs)
  assert set(lum["per_device"]) == {"phone", "dslr"}
  assert "plcc_logistic4" in lum["overall"] and "logistic5_fit" in lum["overall"]
  br = result["baselines"]["brisque"]
  assert br["higher_is_better"] and br["n_train"] == 12
  assert br["overall"]["srcc"] > 0.5
  table = harness.format_result(result)
  assert "| luminance " in table and "| brisque/phone" in table and "PLCC L4" in table
  with pytest.raises(ValueError, match="splits present"):
    harness.evaluate_manifest(manifest, harness.HarnessConfig(split="test", progress=False))


def test_launch_script(tmp_path, monkeypatch, capsys):
  manifest = _write_manifest(tmp_path, n_train=2, n_val=6)
  out = tmp_path / "r.json"
  monkeypatch.setattr(
    sys,
    "argv",
    [
      "baselines.py",
      f"--manifest={manifest}",
      "--split=val",
      "--baselines=luminance",
      f"--json={out}",
    ],
  )
  with pytest.raises(SystemExit) as exit_info:
    runpy.run_path(os.path.join(REPO, "launch", "baselines.py"), run_name="__main__")
  assert exit_info.value.code in (0, None)
  stdout = capsys.readouterr().out
  assert "| luminance" in stdout and "SRCC" in stdout
  data = json.loads(out.read_text())
  assert data["baselines"]["luminance"]["overall"]["n"] == 6
