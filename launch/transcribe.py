"""`bmqa-transcribe` from a clone; flags and examples: bmqa_jax/cli/transcribe.py
(`python launch/transcribe.py --help`).

Transcribes a manifest's audio column with a trained recogniser.
"""

from bmqa_jax import cli

if __name__ == "__main__":
  cli.transcribe()
