"""`bmqa-build-dataset` from a clone; flags and examples: bmqa_jax/cli/build_dataset.py
(`python launch/build_dataset.py --help`).

Writes the built-in MLIQ-like low-light dataset (deterministic from --seed).
"""

from bmqa_jax import cli

if __name__ == "__main__":
  cli.build_dataset()
