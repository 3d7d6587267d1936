r"""Transcribes a manifest's audio column with a trained recogniser.

  bmqa-transcribe --workdir=ASR_WORKDIR --manifest=M.csv --out=T.csv

Writes T.csv: M's rows with ``text`` = transcript (an existing ``text`` is kept
as ``text_reference``); prints WER/CER (jiwer) when references exist.
"""

from absl import flags

from bmqa_jax.speech import infer

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of launch/train_asr.py.")
_MANIFEST = flags.DEFINE_string("manifest", None, "CSV/JSONL with an 'audio' column.")
_OUT = flags.DEFINE_string("out", None, "Output CSV (or JSONL); not the input manifest.")
_DECODER = flags.DEFINE_enum("decoder", "beam", ["beam", "greedy"], "CTC decoding.")
flags.mark_flags_as_required(["workdir", "manifest", "out"])


def main(argv):
  del argv
  rows = infer.transcribe_manifest(_WORKDIR.value, _MANIFEST.value, _OUT.value, _DECODER.value)
  scored = [
    r for r in rows if (r.get("audio") or "").strip() and (r.get("text_reference") or "").strip()
  ]
  print(f"wrote {len(rows)} rows to {_OUT.value}")
  if scored:
    m = infer.evaluate_transcripts(
      [r["text_reference"] for r in scored], [r["text"] for r in scored]
    )
    print(f"WER {m['wer']:.4f}  CER {m['cer']:.4f}  (n={m['n']}, jiwer)")
