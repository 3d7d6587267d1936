"""Generated descriptions are cached by content (issue 11 item 10): the
generating model's checkpoint identity (a retrained model with the same step
count is a new model) and each input file's path, size and modification time."""

import os
import time

import pytest

from bmqa_jax.data import manifest as manifest_lib
from bmqa_jax.experiments import descriptions


def _samples(root, n=3):
  out = []
  for i in range(n):
    path = os.path.join(root, f"{i}.png")
    with open(path, "wb") as f:
      f.write(b"x" * (i + 1))
    out.append(
      manifest_lib.Sample(
        image=path, mos=0.5, scene=f"s{i}", text="", audio="", device="", split="test", row=i + 2
      )
    )
  return out


def _model(root, step=5):
  d = os.path.join(root, "captioner", "checkpoints", str(step))
  os.makedirs(d, exist_ok=True)
  with open(os.path.join(d, "weights"), "w") as f:
    f.write(str(time.time_ns()))
  return os.path.join(root, "captioner")


@pytest.fixture()
def calls(monkeypatch):
  seen = []

  def fake(source, model_dir, inputs):
    seen.append(sorted(os.path.basename(i) for i in inputs))
    with open(os.path.join(model_dir, "checkpoints", "5", "weights")) as f:
      weights = f.read()
    return [f"{os.path.basename(i)} by {weights}" for i in inputs]

  monkeypatch.setattr(descriptions, "generate", fake)
  return seen


def test_cache_reuses_and_invalidates_by_content(tmp_path, calls):
  root, work = str(tmp_path), str(tmp_path / "work")
  samples, model = _samples(root), _model(root)
  first = descriptions.fill(samples, "captioner", model, work, log=lambda *_: None)
  assert calls == [["0.png", "1.png", "2.png"]]
  again = descriptions.fill(samples, "captioner", model, work, log=lambda *_: None)
  assert calls == [["0.png", "1.png", "2.png"]] and again == first  # cached
  with open(samples[1].image, "ab") as f:  # an edited image
    f.write(b"more")
  descriptions.fill(samples, "captioner", model, work, log=lambda *_: None)
  assert calls[-1] == ["1.png"]
  time.sleep(0.01)
  _model(root)  # retrained: the same step count, other files
  out = descriptions.fill(samples, "captioner", model, work, log=lambda *_: None)
  assert calls[-1] == ["0.png", "1.png", "2.png"] and out != first


def test_a_generated_source_needs_its_model(tmp_path):
  with pytest.raises(ValueError, match="captioner_workdir"):
    descriptions.fill(_samples(str(tmp_path)), "captioner", "", str(tmp_path))
  with pytest.raises(FileNotFoundError, match="train the model first"):
    descriptions.fill(_samples(str(tmp_path)), "captioner", str(tmp_path / "none"), str(tmp_path))
