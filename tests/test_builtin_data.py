"""The built-in dataset: deterministic, scene-wise split, MOS protocol, descriptions."""

import csv
import os
import warnings

import numpy as np
import pytest
from scipy import stats

from bmqa_jax.data import builtin
from bmqa_jax.data import describe
from bmqa_jax.data import lowlight

ARGS = builtin.BuildArgs(num_scenes=30, image_size=64, seed=3, audio=False, workers=1)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("builtin"))
  return out, list(csv.DictReader(open(builtin.build(out, ARGS))))


def test_layout_and_counts(built):
  out, rows = built
  assert len(rows) == 30 * len(lowlight.DEVICES)
  for r in rows[:10]:
    assert os.path.isfile(os.path.join(out, r["image"]))
  pre = list(csv.DictReader(open(os.path.join(out, "pretrain.csv"))))
  assert len(pre) == 30 and all(os.path.isfile(os.path.join(out, p["image"])) for p in pre)
  assert {r["device"] for r in rows} == {d.name for d in lowlight.DEVICES}


def test_scene_wise_split(built):
  _, rows = built
  split_of = {}
  for r in rows:
    assert split_of.setdefault(r["scene"], r["split"]) == r["split"]
  counts = {s: sum(v == s for v in split_of.values()) for s in ("train", "val", "test")}
  assert counts == {"train": 24, "val": 3, "test": 3}


def test_mos_protocol(built):
  _, rows = built
  mos = np.array([float(r["mos"]) for r in rows])
  assert mos.min() >= 0 and mos.max() <= 1 and mos.std() > 0.1
  # A mean of 26 votes on 11 levels is a multiple of 0.1 / 26.
  np.testing.assert_allclose(mos * 260, np.round(mos * 260), atol=0.05)
  latent = np.array([float(r["latent_quality"]) for r in rows])
  assert stats.spearmanr(latent, mos)[0] > 0.9
  bright = np.array([float(r["brightness"]) for r in rows])
  assert stats.spearmanr(bright, mos)[0] > 0.5  # brightness dominates (Sec. 3.2.1)


def test_descriptions_follow_the_principles(built):
  _, rows = built
  lengths = [len(r["text"].split()) for r in rows]
  assert min(lengths) >= 6 and max(lengths) <= 45
  assert len({r["text"] for r in rows}) > 0.9 * len(rows)  # varied
  lum = [r["luminance_word"] for r in rows]
  assert all(w in r["text"] for w, r in zip(lum, rows))
  mos = np.array([float(r["mos"]) for r in rows])
  by_word = {w: mos[[x == w for x in lum]].mean() for w in set(lum)}
  order = [w for w in describe.LUMINANCE_WORDS if w in by_word]
  assert [by_word[w] for w in order] == sorted(by_word[w] for w in order)


def test_deterministic(built, tmp_path):
  _, rows = built
  again = list(csv.DictReader(open(builtin.build(str(tmp_path), ARGS))))
  assert again == rows


def test_worker_pool_after_jax_starts_matches_one_worker(tmp_path):
  """Built with a process pool after JAX's backend is up (as `launch/train.py`
  does): no fork (JAX warns on each one: deadlock risk) and the rows of a
  one-process build."""
  import jax  # pylint: disable=g-import-not-at-top

  jax.devices()  # starts the backend (and registers JAX's at-fork warning)
  args = builtin.BuildArgs(num_scenes=4, image_size=32, seed=5, audio=False)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    pooled = list(
      csv.DictReader(
        open(
          builtin.build(
            str(tmp_path / "pool"), builtin.BuildArgs(**{**args.__dict__, "workers": 2})
          )
        )
      )
    )
  assert not [w for w in caught if "os.fork()" in str(w.message)]
  one = list(
    csv.DictReader(
      open(
        builtin.build(str(tmp_path / "one"), builtin.BuildArgs(**{**args.__dict__, "workers": 1}))
      )
    )
  )
  assert pooled == one


def test_capture_physics():
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[0:64, 0:64] / 64.0
  clean = np.stack([0.2 + 0.6 * yy, 0.3 + 0.5 * xx, 0.5 + 0 * xx], -1)
  dev = lowlight.device("phone_a")
  bright = lowlight.capture(clean, dev, 0.5, rng).factors
  dark = lowlight.capture(clean, dev, 0.003, rng).factors
  assert dark["brightness"] < bright["brightness"]
  assert dark["noise_std"] > bright["noise_std"]
  assert dark["exposure"] == dev.max_exposure and dark["blur_px"] > bright["blur_px"]
