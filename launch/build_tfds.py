"""`bmqa-build-tfds` from a clone; flags and examples: bmqa_jax/cli/build_tfds.py
(`python launch/build_tfds.py --help`).

Prepares a TFDS dataset from files you have (nothing is downloaded).
"""

from bmqa_jax import cli

if __name__ == "__main__":
  cli.build_tfds()
