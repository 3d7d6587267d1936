"""Transcription with a trained recogniser (paper Eq. 2: spoken QSD -> words).

``load_recognizer(workdir)`` restores the weights a training run left in
``workdir`` (nothing of the optimiser); ``transcribe_manifest`` writes a copy of
a manifest with a ``text`` column holding the transcript of each row's
``audio``.
"""

from __future__ import annotations

import csv
import io
import json
import os

import jax
import numpy as np

from bmqa_jax import config_bases
from bmqa_jax.speech import data as data_lib
from bmqa_jax.speech import decode as decode_lib
from bmqa_jax.speech import features as features_lib
from bmqa_jax.speech import model as model_lib
from bmqa_jax.speech import text as text_lib
from bmqa_jax.train_lib import checkpoint
from bmqa_jax.train_lib import workdir as workdir_lib

__all__ = [
  "CONFIG_FILE",
  "load_recognizer",
  "transcribe",
  "transcribe_paths",
  "transcribe_manifest",
  "evaluate_transcripts",
]

CONFIG_FILE = "asr_config.json"
_PATH_COLUMNS = ("image", "audio")


def complete_config(stored):
  """A recogniser's stored config read as today's (`config_bases.complete`)."""
  return config_bases.complete(stored, "asr")


def load_recognizer(workdir: str):
  """``(config, model, variables)`` of the latest checkpoint in ``workdir``."""
  if not os.path.isfile(os.path.join(workdir, CONFIG_FILE)):
    raise FileNotFoundError(
      f"{os.path.join(workdir, CONFIG_FILE)} not found: is "
      f"{workdir} an ASR workdir (launch/train_asr.py)?"
    )
  cfg = workdir_lib.load_config(workdir, CONFIG_FILE, complete_config)
  model = model_lib.from_config(cfg)
  variables, _ = checkpoint.load_weights(os.path.join(workdir, "checkpoints"))
  return cfg, model, variables


def logits_fn(model):
  """jit'd ``(variables, features, lengths) -> (log_probs, out_lengths)``."""

  @jax.jit
  def fn(variables, feats, lengths):
    logits, out_len = model.apply(variables, feats, lengths, train=False)
    return jax.nn.log_softmax(logits), out_len

  return fn


def transcribe(model, variables, features, cfg) -> tuple[list[str], list[str]]:
  """Greedy and beam-search transcripts of every utterance of a FeatureCache."""
  fn = logits_fn(model)
  greedy, beam = [""] * len(features), [""] * len(features)
  for idx, feats, lengths in data_lib.feature_batches(
    features, batch_size=cfg.eval_batch_size, frame_buckets=cfg.frame_buckets
  ):
    lp, out_len = fn(variables, feats, lengths)
    lp, out_len = np.asarray(lp)[: len(idx)], np.asarray(out_len)[: len(idx)]
    g = decode_lib.greedy_decode(lp, out_len)
    b = decode_lib.beam_decode(lp, out_len, cfg.decode.beam_size, cfg.decode.prune_log_prob)
    for k, i in enumerate(idx):
      greedy[i], beam[i] = g[k], b[k]
  return greedy, beam


def evaluate_transcripts(references: list[str], hypotheses: list[str]) -> dict:
  """WER and CER with jiwer (the reference implementation)."""
  import jiwer  # pylint: disable=import-outside-toplevel

  refs = [text_lib.normalize(r) for r in references]
  hyps = [text_lib.normalize(h) for h in hypotheses]
  return dict(wer=float(jiwer.wer(refs, hyps)), cer=float(jiwer.cer(refs, hyps)), n=len(refs))


def transcribe_paths(
  workdir: str, paths: list[str], decoder: str = "beam", cache_dir: str | None = None
) -> list[str]:
  """Transcripts of audio files (``decoder``: ``"beam"`` or ``"greedy"``)."""
  if decoder not in ("beam", "greedy"):
    raise ValueError(f"decoder must be 'beam' or 'greedy', got {decoder!r}")
  cfg, model, variables = load_recognizer(workdir)
  feats = features_lib.cached_features(paths, cache_dir, dict(cfg.features))
  greedy, beam = transcribe(model, variables, feats, cfg)
  return beam if decoder == "beam" else greedy


def transcribe_manifest(workdir: str, manifest: str, out: str, decoder: str = "beam") -> list[dict]:
  """Writes ``out`` (CSV, or JSONL when it ends in .jsonl; atomically):
  ``manifest``'s rows with ``text`` set to the transcript of ``audio``; a
  previous ``text`` is kept as ``text_reference``. Rows without audio keep an
  empty ``text``. ``out`` must not be ``manifest`` (its human transcripts would
  be lost on the next run)."""
  if os.path.exists(out) and os.path.samefile(out, manifest):
    raise ValueError(
      f"--out {out!r} is the input manifest: write the transcripts "
      "to another file (the manifest's own text would be replaced)"
    )
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
  os.makedirs(base_out, exist_ok=True)
  if out.lower().endswith(".jsonl"):
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
  else:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    w.writeheader()
    w.writerows(rows)
    text = buf.getvalue()
  workdir_lib.atomic_write(out, text)
  return rows
