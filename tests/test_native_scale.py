"""Native-scale views, multi-level token maps, grid statistics, the frozen-tower
feature cache and probe-then-fine-tune (LP-FT), on tiny models and data."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bmqa_jax import config_bases
from bmqa_jax import defaults
from bmqa_jax.bmqa import feature_cache
from bmqa_jax.bmqa import train
from bmqa_jax.train_lib import checkpoint
from bmqa_jax.data import native
from bmqa_jax.data import pipeline
from bmqa_jax.models import align
from bmqa_jax.bmqa import model as bmqa_lib
from bmqa_jax.models import image
from bmqa_jax.configs import quickstart


def _photo(h, w, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# --- native views -----------------------------------------------------------


def test_native_crops_keep_the_pixels():
  img = _photo(3000, 4000)
  crop = native.random_crop(img, 512, np.random.default_rng(0))
  assert crop.shape == (512, 512, 3)
  # The window is a verbatim piece of the photo: found at some offset.
  ys, xs = np.where((img[:, :, 0] == crop[0, 0, 0]) & (img[:, :, 1] == crop[0, 0, 1]))
  assert any(np.array_equal(img[y : y + 512, x : x + 512], crop) for y, x in zip(ys, xs))
  grid = native.grid_crops(img, 512, (3, 3))
  assert grid.shape == (9, 512, 512, 3)
  np.testing.assert_array_equal(grid[0], img[:512, :512])  # corners included
  np.testing.assert_array_equal(grid[-1], img[-512:, -512:])
  np.testing.assert_array_equal(
    native.grid_crops(img, 512, (1, 1))[0], img[1244:1756, 1744:2256]
  )  # the centre


def test_small_and_mixed_sizes_are_padded_not_resampled():
  small = _photo(20, 50)
  out = native.grid_crops(small, 32, (1, 1))[0]
  assert out.shape == (32, 32, 3)
  np.testing.assert_array_equal(out[6:26, :], small[:, 9:41])  # the pixels, unscaled
  cfg = pipeline.from_config(
    config_bases.complete({"input": dict(mode="native", native_crop=32, eval_grid=(2, 2))})
  )
  views = [pipeline.eval_views(_photo(h, w), cfg) for h, w in ((20, 50), (64, 40))]
  assert {v.shape for v in views} == {(4, 32, 32, 3)}


# --- multi-level token maps ---------------------------------------------------


@pytest.mark.parametrize(
  "name,levels,last",
  [
    ("resnet_tiny", (0, 3), 3),
    ("efficientnet_tiny", (1, 6), None),
    ("convnext_mini", (1, 3), 3),
    ("vit_tiny", (0, 1), None),
  ],
)
def test_levels_leave_existing_outputs_unchanged(name, levels, last):
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  plain = image.create(name)
  variables = plain.init(jax.random.key(1), x)
  multi = image.create(name, levels=levels)
  a = plain.apply(variables, x)
  b = multi.apply(variables, x)  # the same parameters: levels add no weights
  for k in ("pooled", "tokens"):
    np.testing.assert_array_equal(a[k], b[k])
  assert "levels" not in a and len(b["levels"]) == len(levels)
  for t in b["levels"]:
    assert t.ndim == 3 and t.shape[0] == 2 and t.dtype == jnp.float32
  if last is not None:  # the last stage of a CNN is its token map
    np.testing.assert_array_equal(b["levels"][-1], a["tokens"])
  with pytest.raises(ValueError, match="levels"):
    image.create(name, levels=(99,)).apply(variables, x)


def test_grid_statistics_against_numpy():
  x = np.random.default_rng(0).normal(size=(2, 6 * 5, 3)).astype(np.float32)
  got = np.asarray(align.grid_statistics(jnp.asarray(x), (24, 20), 2))  # stride 4
  m = x.reshape(2, 6, 5, 3)
  cell = m[:, 3:6, 2:5].reshape(2, -1, 3)  # bottom-right cell (rows 3..5, cols 2..4)
  np.testing.assert_allclose(got[:, 3, :3], cell.mean(1), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got[:, 3, 3:], np.sqrt(cell.var(1) + 1e-6), rtol=1e-4)
  assert got.shape == (2, 4, 6)
  assert align.map_shape(16 * 16, (512, 512)) == (16, 16)
  assert align.map_shape(7 * 10, (200, 300)) == (7, 10)  # ceil(200/32), ceil(300/32)


def _tiny_config(**over):
  c = quickstart.get_config("tiny=True,modalities=image")
  c.model.image = dict(name="resnet_tiny", init="none", kwargs={}, levels=(1, 3), token_grid=2)
  c.input.update(mode="native", native_crop=64, eval_grid=(2, 1))
  c.update(over)
  return c


def test_cached_features_are_the_towers():
  c = _tiny_config()
  model = bmqa_lib.from_config(c, None)
  x = jax.random.normal(jax.random.key(0), (3, 64, 64, 3))
  v = model.init(jax.random.key(1), x)
  feats = model.apply(v, x, method=model.tower_features)
  assert [f.shape for f in feats] == [(3, 4, 64), (3, 4, 256)]
  full = model.apply(v, x)["score"]
  cached = model.apply(v, None, image_features=feats)["score"]
  np.testing.assert_allclose(full, cached, rtol=1e-6)


def test_scales_concatenate_the_downsampled_photos_statistics():
  """`scales=(1, 2)`: each level's cell statistics of the photo, then of the
  photo's 2×2 block means, through the same tower (no new weights)."""
  one = bmqa_lib.from_config(_tiny_config(), None)
  c = _tiny_config()
  c.model.image = dict(c.model.image.to_dict(), scales=(1, 2))
  two = bmqa_lib.from_config(c, None)
  x = jax.random.normal(jax.random.key(0), (2, 128, 128, 3))
  v = two.init(jax.random.key(1), x)
  feats = two.apply(v, x, method=two.tower_features)
  assert [f.shape for f in feats] == [(2, 4, 128), (2, 4, 512)]
  v1 = {
    "params": {k: p for k, p in v["params"].items() if k == "image_encoder"},
    "batch_stats": v["batch_stats"],
  }
  full = one.apply(v1, x, method=one.tower_features)
  small = x.reshape(2, 64, 2, 64, 2, 3).mean((2, 4))
  half = one.apply(v1, small, method=one.tower_features)
  for f, a, b in zip(feats, full, half):
    np.testing.assert_allclose(f, jnp.concatenate([a, b], -1), rtol=1e-5, atol=1e-5)
  mesh_cfg = pipeline.from_config(c)
  tower = {k: w["image_encoder"] for k, w in v.items()}
  assert feature_cache.tower_key(c, tower, mesh_cfg) != feature_cache.tower_key(
    _tiny_config(), tower, mesh_cfg
  )
  cached = two.apply(v, None, image_features=feats)["score"]
  np.testing.assert_allclose(two.apply(v, x)["score"], cached, rtol=1e-5, atol=1e-6)


# --- feature cache and LP-FT through the trainer -----------------------------


@pytest.fixture(scope="module")
def lpft(tmp_path_factory):
  data = str(tmp_path_factory.mktemp("data"))
  os.environ["BMQA_DATA_DIR"] = data
  c = _tiny_config()
  c.data.builtin_dir = os.path.join(data, "builtin")
  defaults.probe_then_finetune(
    c,
    probe=dict(learning_rate=1e-3),
    finetune=dict(
      epochs=1, batch_size=8, learning_rate=1e-4, checkpoint_every_steps=100, log_every_steps=1
    ),
  )
  work = str(tmp_path_factory.mktemp("lpft"))
  logs = []
  res = train.train_and_evaluate(c, work, log=logs.append, progress=False)
  return dict(cfg=c, work=work, logs=logs, res=res)


def test_probe_stage_trains_from_the_cache_and_ft_from_pixels(lpft):
  logs = "\n".join(lpft["logs"])
  assert "caching the frozen tower's features" in logs
  assert set(lpft["res"]) == {"st", "ft"}
  (folder,) = os.listdir(os.path.join(lpft["work"], "feature_cache"))
  folder = os.path.join(lpft["work"], "feature_cache", folder)
  entries = os.listdir(folder)
  assert len(entries) == 20 * 5 * 9 // 10 and all(e.endswith(".npz") for e in entries)
  level0 = np.load(os.path.join(folder, entries[0]))["level0"]
  assert level0.dtype == np.float16 and level0.shape == (4, 4, 64)  # 2×1 grid, flipped


def test_probe_freezes_the_tower_and_ft_trains_it(lpft):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  def tower(stage):
    mngr = checkpoint.manager(os.path.join(lpft["work"], "checkpoints", stage), 2)
    st = mngr.restore(
      mngr.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore())
    )["state"]
    return st["params"]["image_encoder"], st["params"]["fuse"]

  c = lpft["cfg"]
  model = bmqa_lib.from_config(c, None)
  key = jax.random.key(c.seed)  # as StagePlan.init_variables draws them
  init = model.init({"params": key, "dropout": key}, jnp.zeros((1, 64, 64, 3)))["params"]
  st_tower, _ = tower("st")
  ft_tower, _ = tower("ft")
  diff = lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max())
  # The probe stage never touched the tower (jitted vs eager init: rounding only).
  assert max(jax.tree.leaves(jax.tree.map(diff, init["image_encoder"], st_tower))) < 1e-6
  assert max(jax.tree.leaves(jax.tree.map(diff, st_tower, ft_tower))) > 1e-5


def test_cache_is_reused_and_invalidated_by_a_changed_image(lpft, tmp_path):
  c = lpft["cfg"]
  model = bmqa_lib.from_config(c, None)
  v = model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  pcfg = pipeline.from_config(c)
  paths = []
  for i in range(3):
    p = os.path.join(tmp_path, f"{i}.png")
    from PIL import Image  # pylint: disable=g-import-not-at-top

    Image.fromarray(_photo(70, 80, i)).save(p)
    paths.append(p)
  records = [dict(path=p, mos=np.float32(0.5)) for p in paths]
  mesh = train.sharding.make_mesh(c)
  logs = []
  a = feature_cache.build(model, v, records, c, pcfg, str(tmp_path), mesh, logs.append)
  b = feature_cache.build(model, v, records, c, pcfg, str(tmp_path), mesh, logs.append)
  assert a.folder == b.folder and "reading the cached" in logs[-1]
  x = pipeline.eval_views(np.asarray(Image.open(paths[1]).convert("RGB")), pcfg)
  want = model.apply(v, jnp.asarray(x), method=model.tower_features)
  np.testing.assert_allclose(
    np.asarray(a.levels[1][1, :2], np.float32), np.asarray(want[1]), rtol=2e-3, atol=2e-3
  )
  Image.fromarray(_photo(70, 80, 7)).save(paths[1])  # an edited photo
  os.utime(paths[1], ns=(1, 1))
  c2 = feature_cache.build(model, v, records, c, pcfg, str(tmp_path), mesh, logs.append)
  assert "1 of 3 images" in logs[-1]
  assert not np.array_equal(c2.levels[0][1], a.levels[0][1])
  np.testing.assert_array_equal(c2.levels[0][0], a.levels[0][0])


# --- the default real-photo recipe (configs/biq2021.py) ------------------------

SHARED_PHOTOS = os.path.join(
  os.path.dirname(__file__), "..", "..", "shared", "data", "biq2021_lowlight", "manifest.csv"
)


def test_biq2021_multiscale_recipe_trains_a_step(tmp_path):
  """`configs/biq2021.py` as users run it (ImageNet Lite0, native 512-px
  windows read at scales 1, ½ and ¼, five heads on scale 1, a kernel ridge
  probe on all three) on seven real photos (4 to train, 3 to validate): it
  caches the three scales' statistics, fits the probe and trains and
  evaluates from them."""
  if not os.path.exists(SHARED_PHOTOS):
    pytest.skip("../shared/data/biq2021_lowlight is not here")
  import csv  # pylint: disable=g-import-not-at-top
  from bmqa_jax.configs import biq2021  # pylint: disable=g-import-not-at-top

  with open(SHARED_PHOTOS) as f:
    rows = list(csv.DictReader(f))[:7]
  base = os.path.dirname(os.path.abspath(SHARED_PHOTOS))
  man = os.path.join(tmp_path, "manifest.csv")
  with open(man, "w", newline="") as f:
    w = csv.DictWriter(f, ["image", "mos", "scene", "split"])
    w.writeheader()
    for i, r in enumerate(rows):
      w.writerow(
        dict(
          image=os.path.join(base, r["image"]),
          mos=r["mos"],
          scene=r["scene"],
          split="val" if i >= 4 else "train",
        )
      )
  c = biq2021.get_config(f"manifest={man},epochs=1,batch=4")
  assert tuple(c.model.image.scales) == (1, 2, 4)
  assert tuple(c.model.image.head_scales) == (1,) and c.model.ridge_weight == 0.7
  assert c.model.ridge_kernel == "rbf"
  lin = biq2021.get_config("kernel=linear")  # the previous default
  assert lin.model.ridge_kernel == "linear" and lin.model.ridge_weight == 0.5
  old = biq2021.get_config("scales=1,ridge=0")  # the one before
  assert tuple(old.model.image.scales) == (1,) and old.model.ridge_weight == 0
  with pytest.raises(ValueError, match="kernel="):
    biq2021.get_config("kernel=poly")
  assert biq2021.get_config("recipe=lpft").model.ridge_weight == 0
  logs = []
  res = train.train_and_evaluate(c, str(tmp_path / "w"), log=logs.append, progress=False)
  assert "caching the frozen tower's features: 4 of 4 images × 2 views" in "\n".join(logs)
  # 2,976 cell-averaged statistics and 1,488 spreads of the cells' means.
  assert "rbf ridge probe on 4464 pooled features of 4 images" in "\n".join(logs)
  assert set(res) == {"st"}
  (folder,) = os.listdir(tmp_path / "w" / "feature_cache")
  entry = np.load(
    os.path.join(
      tmp_path,
      "w",
      "feature_cache",
      folder,
      os.listdir(tmp_path / "w" / "feature_cache" / folder)[0],
    )
  )
  # Lite0's stages 1, 2, 4, 6 (24, 40, 112, 320 channels): mean and std × 3 scales.
  assert [entry[f"level{i}"].shape for i in range(4)] == [
    (2, 16, 6 * ch) for ch in (24, 40, 112, 320)
  ]
