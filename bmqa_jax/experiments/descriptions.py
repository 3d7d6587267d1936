"""Where the quality descriptions come from (``config.data.text_source``).

* ``text``: the manifest's ``text`` column (transcripts given);
* ``audio``: the speech recogniser in ``config.data.asr_workdir`` transcribes
  the manifest's ``audio`` column (Eq. 2);
* ``captioner``: the captioner in ``config.data.captioner_workdir`` describes
  each image (Eq. 16; image-only BMQA, Sec. 5.5.3);
* ``none``: no description (an image-only model).

Generated descriptions are cached in ``<workdir>/descriptions_<source>.csv``,
keyed by the generating model's checkpoint (folder, step, and its files' sizes
and times: a retrained model is a new model) and by each input file's path,
size and modification time (an edited image or WAV is described again).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import os
from typing import Sequence

import jax

from bmqa_jax import config_bases
from bmqa_jax import log as log_lib
from bmqa_jax.captioner import infer as captioner_infer
from bmqa_jax.data import manifest as manifest_lib
from bmqa_jax.speech import infer as speech_infer
from bmqa_jax.train_lib import workdir as workdir_lib

SOURCES = ("text", "audio", "captioner", "none")
GENERATED = ("audio", "captioner")


def check_source(source: str) -> None:
  if source not in SOURCES:
    raise ValueError(f"config.data.text_source must be one of {SOURCES}, got {source!r}")


def _checkpoint_identity(model_dir: str) -> str:
  """The generating model's folder, latest step, and the names, sizes and
  modification times of that step's files: a retrained model (even with the same
  step count) gets a new identity."""
  d = os.path.join(model_dir, "checkpoints")
  steps = [int(n) for n in os.listdir(d) if n.isdigit()] if os.path.isdir(d) else []
  if not steps:
    raise FileNotFoundError(f"no checkpoint in {d}: train the model first")
  step_dir = os.path.join(d, str(max(steps)))
  h = hashlib.sha256()
  for root, _, files in sorted(os.walk(step_dir)):
    for name in sorted(files):
      st = os.stat(os.path.join(root, name))
      h.update(
        f"{os.path.relpath(os.path.join(root, name), step_dir)}:{st.st_size}:"
        f"{st.st_mtime_ns};".encode()
      )
  return f"{os.path.abspath(model_dir)}@{max(steps)}#{h.hexdigest()[:16]}"


def _input_key(path: str) -> str:
  """An input file by path, size and modification time (an edited file is new)."""
  st = os.stat(path)
  return f"{path}|{st.st_size}|{st.st_mtime_ns}"


def cache_path(workdir: str, source: str) -> str:
  return os.path.join(workdir, f"descriptions_{source}.csv")


def _read_cache(path: str) -> dict[tuple[str, str], str]:
  if not os.path.isfile(path):
    return {}
  with open(path, newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  if rows and "input_key" not in rows[0]:  # written by release 0.1: not content-keyed
    return {}
  return {(r["model"], r["input_key"]): r["text"] for r in rows}


def _write_cache(path: str, cache: dict[tuple[str, str], str]) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  buf = io.StringIO()
  w = csv.writer(buf)
  w.writerow(["model", "input_key", "text"])
  for (model, inp), text in sorted(cache.items()):
    w.writerow([model, inp, text])
  workdir_lib.atomic_write(path, buf.getvalue())


def generate(source: str, model_dir: str, inputs: Sequence[str]) -> list[str]:
  """Descriptions of audio files (``audio``) or image files (``captioner``)."""
  if source == "audio":
    return speech_infer.transcribe_paths(model_dir, list(inputs))
  if source == "captioner":
    return captioner_infer.describe_paths(model_dir, list(inputs))
  raise ValueError(f"descriptions are generated for {GENERATED}, not {source!r}")


def fill(
  samples: Sequence[manifest_lib.Sample],
  source: str,
  model_dir: str,
  workdir: str,
  log=log_lib.info,
) -> list[manifest_lib.Sample]:
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
        "config.data.text_source='audio' transcribes"
      )
    inputs.append(os.path.abspath(s.audio if source == "audio" else s.image))
  model = _checkpoint_identity(model_dir)
  keys = [_input_key(i) for i in inputs]
  path = cache_path(workdir, source)
  cache = _read_cache(path)
  todo = sorted({(i, k) for i, k in zip(inputs, keys) if (model, k) not in cache})
  if todo:
    log(f"generating {len(todo)} description(s) with the {source} model in {model_dir}")
    for (_, k), text in zip(todo, generate(source, model_dir, [i for i, _ in todo])):
      cache[(model, k)] = text
    if jax.process_index() == 0:
      _write_cache(path, cache)
  return [dataclasses.replace(s, text=cache[(model, k)]) for s, k in zip(samples, keys)]


def describer(source: str, model_dir: str, workdir: str, log=log_lib.info):
  """``samples -> samples`` filling generated descriptions (None for 'text' and
  'none'): what `datasets.load` and `evaluate_workdir` take as ``describe``."""
  check_source(source)
  if source not in GENERATED:
    return None
  return lambda samples: fill(samples, source, model_dir, workdir, log)


def for_training(cfg, workdir: str, log=log_lib.info):
  """The ``describe`` of a training config (config.data.text_source and the
  generating model's workdir)."""
  source = cfg.data.get("text_source", "text")
  model_dir = cfg.data.get("asr_workdir" if source == "audio" else "captioner_workdir", "")
  return describer(source, model_dir, workdir, log)


def for_evaluation(
  workdir: str,
  text_source: str | None = None,
  captioner: str | None = None,
  asr: str | None = None,
  log=log_lib.info,
):
  """(text_source, describe) to score a trained workdir: `text_source` default
  the run's config.data.text_source, or 'captioner' when `captioner` is given;
  `captioner`/`asr` default the run's config.data.captioner_workdir/asr_workdir."""
  cfg = workdir_lib.load_config(workdir, complete=config_bases.complete)
  source = text_source or ("captioner" if captioner else cfg.data.text_source)
  check_source(source)
  model_dir = (
    (asr or cfg.data.asr_workdir)
    if source == "audio"
    else (captioner or cfg.data.captioner_workdir)
  )
  if source in GENERATED and "text" not in cfg.model.modalities:
    log(f"note: {workdir} is an image-only model; no descriptions are generated")
    return source, None
  return source, describer(source, model_dir, workdir, log)
