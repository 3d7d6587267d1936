"""`bmqa-train` from a clone; flags and examples: bmqa_jax/cli/train.py
(`python launch/train.py --help`).

Trains BMQA: every stage of the config, resuming from the workdir.
"""

from bmqa_jax import cli

if __name__ == "__main__":
  cli.train()
