"""`bmqa-train-captioner` from a clone; flags and examples: bmqa_jax/cli/train_captioner.py
(`python launch/train_captioner.py --help`).

Trains the QSD captioner (Show-Attend-Tell); see configs/captioner.py.
"""

from bmqa_jax import cli

if __name__ == "__main__":
  cli.train_captioner()
