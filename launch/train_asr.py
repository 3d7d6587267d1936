"""`bmqa-train-asr` from a clone; flags and examples: bmqa_jax/cli/train_asr.py
(`python launch/train_asr.py --help`).

Trains the speech recogniser; see configs/asr.py for the commands.
"""

from bmqa_jax import cli

if __name__ == "__main__":
  cli.train_asr()
