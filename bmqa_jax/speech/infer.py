"""Transcription with a trained recogniser (paper Eq. 2: spoken QSD -> words).

``load_recognizer(workdir)`` restores the model a ``train_and_evaluate`` run
left in ``workdir``; ``transcribe_manifest`` writes a copy of a manifest with
a ``text`` column holding the transcript of each row's ``audio``.
"""

from __future__ import annotations

import csv
import json
import os

import flax
import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp

from bmqa_jax.speech import data as data_lib
from bmqa_jax.speech import features as features_lib
from bmqa_jax.speech import train as train_lib

__all__ = ["load_recognizer", "transcribe_paths", "transcribe_manifest"]

_PATH_COLUMNS = ("image", "audio")


def load_recognizer(workdir: str):
  """``(config, model, variables)`` of the latest checkpoint in ``workdir``."""
  cfg_path = os.path.join(workdir, train_lib.CONFIG_FILE)
  if not os.path.isfile(cfg_path):
    raise FileNotFoundError(f"{cfg_path} not found: is {workdir} an ASR workdir "
                            "(launch/train_asr.py)?")
  with open(cfg_path, encoding="utf-8") as f:
    config = ml_collections.ConfigDict(json.load(f))
  model = train_lib.build_model(config)
  tx = train_lib.create_optimizer(config)
  frames = min(config.frame_buckets)
  abstract = jax.eval_shape(lambda: train_lib.init_state(
      model, tx, jnp.zeros((1, frames, config.features.n_mels)),
      jnp.array([frames]), jax.random.key(0)))
  manager = ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"))
  step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints")
  restored = manager.restore(step, args=ocp.args.StandardRestore(
      flax.serialization.to_state_dict(abstract)))
  state = flax.serialization.from_state_dict(abstract, restored)
  return config, model, {"params": state.params, "batch_stats": state.batch_stats}


def transcribe_paths(workdir: str, paths: list[str], decoder: str = "beam",
                     cache_dir: str | None = None) -> list[str]:
  """Transcripts of audio files (``decoder``: ``"beam"`` or ``"greedy"``)."""
  if decoder not in ("beam", "greedy"):
    raise ValueError(f"decoder must be 'beam' or 'greedy', got {decoder!r}")
  config, model, variables = load_recognizer(workdir)
  feats = features_lib.cached_features(paths, cache_dir, dict(config.features))
  greedy, beam = train_lib.transcribe(model, variables, feats, config)
  return beam if decoder == "beam" else greedy


def transcribe_manifest(workdir: str, manifest: str, out: str,
                        decoder: str = "beam") -> list[dict]:
  """Writes ``out``: ``manifest``'s rows (CSV) with ``text`` set to the
  transcript of ``audio``; a previous ``text`` is kept as ``text_reference``.
  Rows without audio keep an empty ``text``."""
  rows = data_lib.read_manifest(manifest)
  with_audio = [r for r in rows if (r.get("audio") or "").strip()]
  if not with_audio:
    raise ValueError(f"{manifest}: no row has an 'audio' path")
  paths = data_lib.resolve_audio(manifest, with_audio)
  texts = transcribe_paths(workdir, paths, decoder)
  for r in rows:
    if "text" in r:
      r["text_reference"] = r["text"]
    r["text"] = ""
  for r, t in zip(with_audio, texts):
    r["text"] = t
  # Paths stay valid relative to the output file's folder.
  base_in = os.path.dirname(os.path.abspath(manifest))
  base_out = os.path.dirname(os.path.abspath(out))
  for r in rows:
    for col in _PATH_COLUMNS:
      if (r.get(col) or "").strip():
        r[col] = os.path.relpath(os.path.join(base_in, r[col]), base_out)
  fields = list(dict.fromkeys(k for r in rows for k in r))
  os.makedirs(base_out, exist_ok=True)
  with open(out, "w", newline="", encoding="utf-8") as f:
    w = csv.DictWriter(f, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
  return rows
