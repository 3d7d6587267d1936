"""The frozen-tower feature cache as users meet it: a damaged entry (truncated,
empty, wrong shape, NaN) is named in the log and computed again, and the run's
metrics are those of a run on an undamaged cache; a later run sharing the cache
reads the repaired entries."""

import os

import numpy as np
import pytest

from bmqa_jax import defaults
from bmqa_jax.bmqa import cache_entry
from bmqa_jax.bmqa import feature_cache
from bmqa_jax.bmqa import train
from bmqa_jax.configs import quickstart


def _config(data, cache):
  c = quickstart.get_config("tiny=True,modalities=image")
  c.data.builtin_dir = os.path.join(data, "builtin")
  c.data.feature_cache_dir = cache
  c.model.image = dict(name="resnet_tiny", init="none", kwargs={}, levels=(1, 3), token_grid=2)
  c.input.update(mode="native", native_crop=64, eval_grid=(2, 1))
  c.st.update(
    epochs=1, checkpoint_every_steps=100, trainable=defaults.frozen_tower_regex()
  )  # the probe: cached
  return c


def _run(c, work):
  logs = []
  res = train.train_and_evaluate(c, work, log=logs.append, progress=False)
  return res["st"], "\n".join(logs)


def _damage(path, how):
  if how == "truncated":
    with open(path, "rb") as f:
      data = f.read()
    with open(path, "wb") as f:
      f.write(data[: len(data) // 2])
  elif how == "empty":
    open(path, "wb").close()
  else:
    with np.load(path) as z:
      levels = {k: z[k] for k in z.files}
    if how == "shape":
      levels["level0"] = levels["level0"][:1]
    else:  # a NaN
      levels["level1"] = levels["level1"].copy()
      levels["level1"].flat[3] = np.nan
    np.savez(path, **levels)  # the name ends in .npz: written as it is


def test_damaged_entries_are_named_rebuilt_and_leave_the_metrics_unchanged(tmp_path, monkeypatch):
  data = str(tmp_path / "data")
  monkeypatch.setenv("BMQA_DATA_DIR", data)
  cache = str(tmp_path / "cache")
  c = _config(data, cache)
  want, log = _run(c, str(tmp_path / "a"))
  assert "caching the frozen tower's features" in log
  (folder,) = os.listdir(cache)
  folder = os.path.join(cache, folder)
  entries = sorted(os.path.join(folder, e) for e in os.listdir(folder))
  assert all(e.endswith(".npz") for e in entries)  # no temporary file left
  damaged = dict(zip(("truncated", "empty", "shape", "nan"), entries))
  for how, path in damaged.items():
    _damage(path, how)
  got, log = _run(c, str(tmp_path / "b"))  # a run sharing the cache
  for how, path in damaged.items():
    assert f"damaged entry {path}" in log, how
  assert got == want
  for path in damaged.values():  # repaired on disk
    feature_cache.read_entry(path, [np.load(entries[-1])[k].shape for k in ("level0", "level1")])
  again, log = _run(c, str(tmp_path / "c"))  # and a later run reads them
  assert "damaged entry" not in log and "reading the cached tower features" in log
  assert again == want


def test_read_entry_names_each_kind_of_damage(tmp_path):
  path = str(tmp_path / "e.npz")
  good = [np.ones((2, 4, 8), np.float16), np.ones((2, 4, 16), np.float16)]
  cache_entry.write(path, good)
  shapes = [a.shape for a in good]
  assert [a.shape for a in feature_cache.read_entry(path, shapes)] == shapes
  assert os.listdir(tmp_path) == ["e.npz"]
  with pytest.raises(feature_cache.DamagedEntry, match="expected float16"):
    feature_cache.read_entry(path, [(2, 4, 8), (3, 4, 16)])
  with pytest.raises(feature_cache.DamagedEntry, match="expected"):
    feature_cache.read_entry(path, [(2, 4, 8)])
  open(path, "wb").close()
  with pytest.raises(feature_cache.DamagedEntry, match="unreadable"):
    feature_cache.read_entry(path, shapes)


def test_waiting_for_another_process_times_out_naming_it(tmp_path):
  """A process that has computed its share waits for the others' entries; an
  entry that never appears stops it with the process that owes it."""
  shapes = [(2, 4, 8)]
  files = [str(tmp_path / f"{i}.npz") for i in range(4)]
  cache_entry.write(files[1], [np.ones(shapes[0], np.float16)])
  entries = [None] * 4
  with pytest.raises(
    TimeoutError,
    match=r"waited 0 s for process 1 of 2 with no new "
    r"entry; 1 entries are missing, e.g. .*3.npz",
  ):
    feature_cache._wait_for([1, 3], files, shapes, entries, 2, 0.3, print)  # pylint: disable=protected-access
  assert entries[1] is not None  # the one that was there is read
