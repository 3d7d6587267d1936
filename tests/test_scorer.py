"""`bmqa_jax.create_metric`, the Python scorer, as users call it: the model
shipped in the package on paths, folders, globs, arrays and PIL images.

The photos are scikit-image's darkened photos whose scores the shipped model's
build recorded (`reference.json`); a path, an array and a PIL image of one
photo give the same score, bit for bit.
"""

import configparser
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

import bmqa_jax
from bmqa_jax.bmqa import model as bmqa_lib
from bmqa_jax.bmqa import scoring
from bmqa_jax.bmqa import shipped
from bmqa_jax.configs import quickstart
from bmqa_jax.data import image_io
from bmqa_jax.data import tokenizer as tokenizer_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def metric():
  return bmqa_jax.create_metric()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
  return shipped.reference_photos(str(tmp_path_factory.mktemp("photos")))


@pytest.fixture(scope="module")
def reference():
  with open(os.path.join(shipped.ASSET_DIR, "reference.json")) as f:
    return json.load(f)["photos"]


def test_version_and_attributes(metric):
  cfg = configparser.ConfigParser()
  cfg.read(os.path.join(ROOT, "setup.cfg"))
  assert cfg["metadata"]["version"] == "attr: bmqa_jax.__version__"  # one source
  assert bmqa_jax.__version__.count(".") == 2
  assert metric.lower_better is False and metric.score_range == (0.0, 1.0)
  assert metric.name == shipped.NAME
  assert metric.identity()["model"]["name"] == shipped.NAME
  assert len(metric.identity()["model"]["sha256"]) == 64


def test_paths_arrays_and_pil_images_give_identical_scores(metric, photos, reference):
  by_path = metric(photos)
  assert by_path.dtype == np.float32 and by_path.shape == (len(photos),)
  for p, s in zip(photos, by_path):
    assert s == pytest.approx(reference[os.path.basename(p)], abs=1e-4)
  assert np.all((by_path >= 0) & (by_path <= 1))
  arrays = [np.asarray(Image.open(p).convert("RGB")) for p in photos]
  np.testing.assert_array_equal(metric([pathlib.Path(p) for p in photos]), by_path)
  np.testing.assert_array_equal(metric(arrays), by_path)
  np.testing.assert_array_equal(metric([Image.open(p) for p in photos]), by_path)
  np.testing.assert_array_equal(metric([a.astype(np.float32) / 255 for a in arrays]), by_path)
  np.testing.assert_array_equal(metric([jax.numpy.asarray(a) for a in arrays]), by_path)
  # One image: a path, a Path, an array; a batch [N, H, W, C] of same-sized ones.
  np.testing.assert_array_equal(metric(photos[0]), by_path[:1])
  np.testing.assert_array_equal(metric(pathlib.Path(photos[0])), by_path[:1])
  np.testing.assert_array_equal(metric(arrays[0]), by_path[:1])
  same = [i for i, a in enumerate(arrays) if a.shape == arrays[-1].shape]
  assert len(same) >= 2
  np.testing.assert_array_equal(metric(np.stack([arrays[i] for i in same])), by_path[same])
  grey = np.asarray(Image.open(photos[-1]))  # camera: a grey photo, [H, W]
  assert grey.ndim == 2
  np.testing.assert_array_equal(metric(grey), by_path[-1:])


def test_a_lone_string_is_one_path_and_lists_take_folders_and_globs(metric, photos, tmp_path):
  """A str used to be iterated character by character ('/' walked the disk)."""
  folder = tmp_path / "dark"
  (folder / "sub").mkdir(parents=True)
  for i, p in enumerate(photos[:2]):
    (folder / ("sub" if i else "") / os.path.basename(p)).write_bytes(pathlib.Path(p).read_bytes())
  want = metric(photos[:2])
  assert metric(str(folder / os.path.basename(photos[0]))).shape == (1,)
  np.testing.assert_array_equal(np.sort(metric(str(folder))), np.sort(want))
  np.testing.assert_array_equal(np.sort(metric(folder)), np.sort(want))
  np.testing.assert_array_equal(np.sort(metric([f"{folder}/**/*.png"])), np.sort(want))
  # A folder that a pattern matches is read as a folder (it failed as an image).
  np.testing.assert_array_equal(np.sort(metric(f"{folder}/*")), np.sort(want))
  got = metric([photos[0], str(folder)])
  assert got.shape == (3,) and got[0] == want[0]


def test_failures_are_named_and_the_others_kept(metric, photos, tmp_path):
  broken = tmp_path / "broken.jpg"
  broken.write_bytes(b"\xff\xd8 not a jpeg")
  with pytest.raises(scoring.ScoringError) as e:
    metric([photos[0], str(broken), str(tmp_path / "none*.png")])
  assert "2 of 3 image(s) could not be scored" in str(e.value)
  assert str(broken) in str(e.value) and "no file matches this pattern" in str(e.value)
  assert e.value.results[0].score == metric(photos[0])[0]
  bad = {
    "float outside [0, 1]": np.full((40, 40, 3), 2.0, np.float32),
    "NaN": np.full((40, 40, 3), np.nan, np.float32),
    "dtype uint16": np.zeros((40, 40, 3), np.uint16),
    "channels last": np.zeros((3, 40, 40), np.uint8),
  }
  for what, array in bad.items():
    with pytest.raises(scoring.ScoringError, match="array 0") as e:
      metric(array)
    assert what.split()[-1] in str(e.value), (what, str(e.value))


def test_one_failure_never_stops_the_others(metric, photos, monkeypatch):
  """A file whose reading or views run out of memory (as a 1 x 20,000,000 PNG
  padded to native windows did: 28.6 GiB) is reported; the next is scored."""
  read = image_io.read_image_uint8

  def read_or_fail(path, **kw):
    if path == photos[0]:
      raise MemoryError("Unable to allocate 28.6 GiB for an array")
    return read(path, **kw)

  monkeypatch.setattr(image_io, "read_image_uint8", read_or_fail)
  results = list(metric.iter_files(photos[:2]))
  assert results[0].score is None
  assert results[0].error == "MemoryError: Unable to allocate 28.6 GiB for an array"
  assert results[1].score == metric(photos[1])[0]


def test_a_non_finite_score_is_a_failure(metric, photos, monkeypatch):
  nan = jax.tree.map(lambda v: np.full_like(v, np.nan), metric._variables)  # pylint: disable=protected-access
  monkeypatch.setattr(metric, "_variables", nan)
  result = next(metric.iter_files(photos[:1]))
  assert result.score is None and "score is not finite (nan)" in result.error
  with pytest.raises(scoring.ScoringError, match="not finite"):
    metric(photos[0])


def test_view_is_checked_when_created():
  with pytest.raises(ValueError, match="view='tiles' is for models trained on resized"):
    bmqa_jax.create_metric(view="tiles")
  with pytest.raises(ValueError, match="view must be one of"):
    bmqa_jax.create_metric(view="centre")


def test_text_per_image(photos, tmp_path):
  """An image+text model (the quickstart's, untrained weights: only the routing
  of the descriptions is checked) scores each image with its own text."""
  cfg = quickstart.get_config("tiny=True")
  texts = ["a dim street, noisy", "a bright room, sharp", "a dark cat, blurred"] * 8
  tok = tokenizer_lib.train(texts, str(tmp_path / "tok.model"), cfg.tokenizer.vocab_size)
  model = bmqa_lib.from_config(cfg, tok.vocab_size)
  size = cfg.input.image_size
  ids, mask = tok.encode(texts[:1], cfg.input.max_text_len)
  variables = model.init(jax.random.key(0), np.zeros((1, size, size, 3), np.float32), ids, mask)
  metric = scoring.Metric(
    cfg,
    model,
    variables,
    tok,
    name="quickstart",
    identity={},
    view="auto",
    text=None,
    batch_size=16,
    tile_short_side=512,
  )
  two = photos[:2]
  each = np.concatenate([metric(p, text=t) for p, t in zip(two, texts[:2])])
  np.testing.assert_array_equal(metric(two, text=texts[:2]), each)
  np.testing.assert_array_equal(
    metric(two, text={os.path.abspath(p): t for p, t in zip(two, texts[:2])}), each
  )
  assert metric(two[0], text=texts[1])[0] != each[0]  # the text is read
  with pytest.raises(ValueError, match="1 texts for 2 images"):
    metric(two, text=texts[:1])
  with pytest.raises(scoring.ScoringError, match="no description for this image"):
    metric(two)


SCRIPT = """\
import bmqa_jax
metric = bmqa_jax.create_metric()
print(repr(float(metric({photo!r})[0])))
"""


def test_compiled_once_and_kept_in_the_persistent_cache(photos, tmp_path):
  """The 3-line Python form turns XLA's persistent cache on (a second process
  loads the program) and shows no progress bar."""
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION")}
  env.update(
    BMQA_CACHE_DIR=str(tmp_path / "cache"),
    JAX_PLATFORMS="cpu",
    PYTHONPATH=os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")])),
  )
  run = lambda: subprocess.run(
    [sys.executable, "-c", SCRIPT.format(photo=photos[0])],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  first = run()
  assert first.returncode == 0, first.stderr[-3000:]
  entries = sorted(os.listdir(tmp_path / "cache" / "xla"))
  assert entries
  second = run()
  assert second.returncode == 0, second.stderr[-3000:]
  assert sorted(os.listdir(tmp_path / "cache" / "xla")) == entries  # loaded
  assert first.stdout == second.stdout
  assert "scoring" not in first.stderr + second.stderr  # no progress bar
