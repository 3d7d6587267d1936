"""Memory is bounded per image: the pixel bound (`config.input.max_pixels`,
100 MP) covers what the views make of an image, not only its decoded size. A
PNG of a few KB and extreme aspect is under the bound decoded but not padded
(native windows) or resized (resize models); it is refused with the file and
the bound named, before anything is allocated, and the other file of the same
call is scored."""

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

import bmqa_jax
from bmqa_jax import defaults
from bmqa_jax.bmqa import model as bmqa_lib
from bmqa_jax.bmqa import scoring
from bmqa_jax.bmqa import shipped
from bmqa_jax.configs import quickstart
from bmqa_jax.data import pipeline


def _thin(path, width):
  Image.new("L", (width, 1), 40).save(path)
  return str(path)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
  return shipped.reference_photos(str(tmp_path_factory.mktemp("photos")))


def test_native_model_refuses_a_thin_png_and_scores_the_other(photos, tmp_path):
  """The shipped model reads 512-px native windows: a 1 x 250,000 PNG would be
  padded to 512 x 250,000 (128 megapixels; 1 x 20,000,000 made 28.6 GiB)."""
  thin = _thin(tmp_path / "thin.png", 250_000)
  metric = bmqa_jax.create_metric()
  results = list(metric.iter_files([thin, photos[0]]))
  assert results[0].path == thin and results[0].score is None
  assert thin in results[0].error and "250000x1 mirror-padded" in results[0].error
  assert "over the bound of 100 megapixels" in results[0].error
  assert results[1].score == metric(photos[0])[0]
  with pytest.raises(scoring.ScoringError, match="1 of 2 image"):
    metric([photos[0], thin])


def test_resize_model_refuses_a_thin_png_and_scores_the_other(photos, tmp_path):
  """A model of resized input: the 19 KB 1 x 20,000,000 PNG of the report,
  resized to a short side of 36, would be 36 x 720,000,000 (PIL: MemoryError)."""
  thin = _thin(tmp_path / "thin.png", 20_000_000)
  cfg = quickstart.get_config("tiny=True,modalities=image")
  assert pipeline.from_config(cfg).mode == "resize"
  model = bmqa_lib.from_config(cfg, None)
  size = cfg.input.image_size
  variables = model.init(jax.random.key(0), np.zeros((1, size, size, 3), np.float32))
  metric = scoring.Metric(
    cfg,
    model,
    variables,
    None,
    name="quickstart",
    identity={},
    view="auto",
    text=None,
    batch_size=16,
    tile_short_side=512,
  )
  with pytest.raises(scoring.ScoringError) as e:
    metric([thin, photos[0]])
  bad, good = e.value.results
  assert bad.score is None and thin in bad.error
  assert "resized to a short side of 36" in bad.error and "over the bound" in bad.error
  assert good.score == metric(photos[0])[0]


def _pcfg(**overrides) -> pipeline.PipelineConfig:
  return pipeline.from_config(
    ml_collections.ConfigDict({"input": defaults.input_config(**overrides)})
  )


def test_working_size_of_each_view():
  native = _pcfg(mode="native", native_crop=512)
  assert pipeline.working_size(1, 20_000_000, native) == (512, 20_000_000)
  assert pipeline.working_size(3000, 4000, native) == (3000, 4000)  # no padding
  resize = _pcfg(mode="resize", image_size=224, resize_size=256)
  assert pipeline.working_size(3000, 4000, resize) == (256, 341)
  with pytest.raises(ValueError, match="'a.png'.*over the bound of 1 megapixels"):
    pipeline.check_size(2, 5000, _pcfg(max_pixels=10**6), "a.png")
