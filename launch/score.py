"""`bmqa-score` from a clone; flags and examples: bmqa_jax/cli/score.py
(`python launch/score.py --help`).

Prints a quality score per photo (predicted MOS in [0, 1], higher is better).
"""

from bmqa_jax import cli

if __name__ == "__main__":
  cli.score()
