"""Grain pipeline: shapes, normalisation, determinism, padding, iterator state."""

import numpy as np
import pytest
from PIL import Image

from bmqa_jax import config_bases
from bmqa_jax.data import manifest
from bmqa_jax.data import pipeline
from bmqa_jax.data import tokenizer as tokenizer_lib

CFG = pipeline.from_config(
  config_bases.complete({"input": dict(image_size=24, resize_size=28, max_text_len=12)})
)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
  d = tmp_path_factory.mktemp("imgs")
  rng = np.random.default_rng(0)
  rows = []
  for i in range(10):
    Image.fromarray(rng.integers(0, 255, (30 + i, 40, 3), dtype=np.uint8)).save(d / f"{i}.png")
    rows.append(f"{i}.png,{i / 10},s{i},a dim street with a blue car number {i}")
  (d / "m.csv").write_text("image,mos,scene,text\n" + "\n".join(rows) + "\n")
  samples = manifest.load(str(d / "m.csv"), require_text=True)
  tok = tokenizer_lib.train([s.text for s in samples], str(d / "tok.model"), 40)
  return pipeline.to_records(samples, tok, CFG.max_text_len)


def test_train_batches(records):
  it = iter(pipeline.train_loader(records, CFG, 4, seed=0))
  b = next(it)
  assert b["image"].shape == (4, 24, 24, 3) and b["image"].dtype == np.float32
  assert b["text_ids"].shape == (4, 12) and b["text_mask"].dtype == bool
  assert np.all(b["text_mask"][:, 0])  # BOS
  assert -2.2 < b["image"].min() and b["image"].max() < 2.7  # ImageNet-normalised


def test_deterministic_and_resumable(records):
  a = iter(pipeline.train_loader(records, CFG, 4, seed=7))
  first = [next(a)["index"].tolist() for _ in range(2)]
  state = a.get_state()
  after = next(a)
  b = iter(pipeline.train_loader(records, CFG, 4, seed=7))
  assert [next(b)["index"].tolist() for _ in range(2)] == first
  # A resumed run starts the loader at its step: the batches of an uninterrupted run.
  c = iter(pipeline.train_loader(records, CFG, 4, seed=7, start_step=2))
  resumed = next(c)
  np.testing.assert_array_equal(resumed["index"], after["index"])
  np.testing.assert_array_equal(resumed["image"], after["image"])
  d = iter(pipeline.train_loader(records, CFG, 4, seed=7))  # grain's own state too
  d.set_state(state)
  np.testing.assert_array_equal(next(d)["image"], after["image"])
  # Epochs: every record once per 10 rows, reshuffled per epoch.
  rows = [
    i
    for b in [first[0], first[1], after["index"].tolist()]
    + [next(a)["index"].tolist() for _ in range(2)]
    for i in b
  ]
  assert sorted(rows[:10]) == list(range(10)) and sorted(rows[10:20]) == list(range(10))
  assert rows[:10] != rows[10:20]


def test_each_process_reads_only_its_rows_of_the_same_global_batch(records, monkeypatch):
  """Two processes: process i decodes rows i·2, i·2+1 of each global batch of 4;
  together they give the one-process batches, augmentation included."""
  import jax  # pylint: disable=g-import-not-at-top
  from bmqa_jax.data import image_io  # pylint: disable=g-import-not-at-top

  one = iter(pipeline.train_loader(records, CFG, 4, seed=3))
  want = [next(one) for _ in range(3)]
  real, reads = image_io.read_image_uint8, []
  monkeypatch.setattr(
    image_io, "read_image_uint8", lambda p, **kw: reads.append(p) or real(p, **kw)
  )
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  parts = []
  for i in (0, 1):
    monkeypatch.setattr(jax, "process_index", lambda i=i: i)
    it = iter(pipeline.train_loader(records, CFG, 4, seed=3))
    parts.append([next(it) for _ in range(3)])
  assert len(reads) == 2 * 3 * 2  # 2 processes × 3 batches × their 2 rows
  for t in range(3):
    for k in ("index", "image", "text_ids"):
      np.testing.assert_array_equal(np.concatenate([parts[0][t][k], parts[1][t][k]]), want[t][k])


def test_eval_padding_covers_every_record_once(records):
  seen = []
  for b in pipeline.eval_batches(records, CFG, 4):
    assert b["image"].shape[0] == 4
    seen += b["index"][b["valid"]].tolist()
  assert seen == list(range(10))


def test_center_crop_and_random_crop_shapes():
  img = np.zeros((50, 80, 3), np.uint8)
  assert pipeline.center_crop(img, 28, 24).shape == (24, 24, 3)
  rng = np.random.default_rng(0)
  out = pipeline.random_resized_crop(img, 16, (0.2, 1.0), (0.75, 1.33), rng)
  assert out.shape == (16, 16, 3)


def test_batch_larger_than_data_is_refused(records):
  with pytest.raises(ValueError, match="fewer than one batch"):
    pipeline.train_loader(records, CFG, 64, seed=0)
