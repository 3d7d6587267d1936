"""`bmqa-convert-weights` from a clone; flags and examples: bmqa_jax/cli/convert_weights.py
(`python launch/convert_weights.py --help`).

Converts PyTorch image-encoder weights to an orbax checkpoint (issue 3).
"""

from bmqa_jax import cli

if __name__ == "__main__":
  cli.convert_weights()
