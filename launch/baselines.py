"""`bmqa-baselines` from a clone; flags and examples: bmqa_jax/cli/baselines.py
(`python launch/baselines.py --help`).

Scores a manifest with the reference baselines and prints the IQA table.
"""

from bmqa_jax import cli

if __name__ == "__main__":
  cli.baselines()
