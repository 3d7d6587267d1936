"""`bmqa-repeated-splits` from a clone; flags and examples: bmqa_jax/cli/repeated_splits.py
(`python launch/repeated_splits.py --help`).

Trains and tests a config on N scene-wise random 8:1:1 splits (Sec. 5.1.1).
"""

from bmqa_jax import cli

if __name__ == "__main__":
  cli.repeated_splits()
