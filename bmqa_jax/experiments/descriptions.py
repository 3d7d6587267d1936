"""Where the quality descriptions come from (``config.data.text_source``).

* ``text``: the manifest's ``text`` column (transcripts given);
* ``audio``: the speech recogniser in ``config.data.asr_workdir`` transcribes
  the manifest's ``audio`` column (Eq. 2);
* ``captioner``: the captioner in ``config.data.captioner_workdir`` describes
  each image (Eq. 16; image-only BMQA, Sec. 5.5.3);
* ``none``: no description (an image-only model).

Generated descriptions are cached in ``<workdir>/descriptions_<source>.csv``
(keyed by the source model's folder and checkpoint step and by the input file),
so each is computed once per model.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from typing import Sequence

from bmqa_jax.data import manifest as manifest_lib

SOURCES = ("text", "audio", "captioner", "none")
GENERATED = ("audio", "captioner")


def check_source(source: str) -> None:
  if source not in SOURCES:
    raise ValueError(f"config.data.text_source must be one of {SOURCES}, got {source!r}")


def _latest_step(workdir: str) -> str:
  d = os.path.join(workdir, "checkpoints")
  steps = [int(n) for n in os.listdir(d) if n.isdigit()] if os.path.isdir(d) else []
  if not steps:
    raise FileNotFoundError(f"no checkpoint in {d}: train the model first")
  return str(max(steps))


def _model_key(source: str, model_dir: str) -> str:
  return f"{os.path.abspath(model_dir)}@{_latest_step(model_dir)}"


def cache_path(workdir: str, source: str) -> str:
  return os.path.join(workdir, f"descriptions_{source}.csv")


def _read_cache(path: str) -> dict[tuple[str, str], str]:
  if not os.path.isfile(path):
    return {}
  with open(path, newline="", encoding="utf-8") as f:
    return {(r["model"], r["input"]): r["text"] for r in csv.DictReader(f)}


def _write_cache(path: str, cache: dict[tuple[str, str], str]) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path + ".tmp", "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(["model", "input", "text"])
    for (model, inp), text in sorted(cache.items()):
      w.writerow([model, inp, text])
  os.replace(path + ".tmp", path)


def generate(source: str, model_dir: str, inputs: Sequence[str]) -> list[str]:
  """Descriptions of audio files (``audio``) or image files (``captioner``)."""
  if source == "audio":
    from bmqa_jax.speech import infer  # pylint: disable=g-import-not-at-top
    return infer.transcribe_paths(model_dir, list(inputs))
  if source == "captioner":
    from bmqa_jax.captioner import infer  # pylint: disable=g-import-not-at-top
    return infer.describe_paths(model_dir, list(inputs))
  raise ValueError(f"descriptions are generated for {GENERATED}, not {source!r}")


def fill(samples: Sequence[manifest_lib.Sample], source: str, model_dir: str,
         workdir: str, log=print) -> list[manifest_lib.Sample]:
  """``samples`` with ``text`` replaced by generated descriptions (cached)."""
  check_source(source)
  if source not in GENERATED:
    return list(samples)
  what = "config.data.asr_workdir" if source == "audio" else "config.data.captioner_workdir"
  if not model_dir:
    raise ValueError(f"config.data.text_source={source!r} needs {what}")
  inputs = []
  for s in samples:
    if source == "audio" and not s.audio:
      raise manifest_lib.ManifestError(
          f"row {s.row} (image {s.image}) has no `audio`, which "
          "config.data.text_source='audio' transcribes")
    inputs.append(os.path.abspath(s.audio if source == "audio" else s.image))
  key = _model_key(source, model_dir)
  path = cache_path(workdir, source)
  cache = _read_cache(path)
  todo = sorted({i for i in inputs if (key, i) not in cache})
  if todo:
    log(f"generating {len(todo)} description(s) with the {source} model in {model_dir}")
    for i, text in zip(todo, generate(source, model_dir, todo)):
      cache[(key, i)] = text
    _write_cache(path, cache)
  return [dataclasses.replace(s, text=cache[(key, i)]) for s, i in zip(samples, inputs)]


def write_csv(path: str, samples: Sequence[manifest_lib.Sample], source: str) -> None:
  """The descriptions a model was scored with: image, audio, text, source."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path + ".tmp", "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(["image", "audio", "text", "source"])
    for s in samples:
      w.writerow([s.image, s.audio, s.text, source])
  os.replace(path + ".tmp", path)
