"""`bmqa-evaluate` from a clone; flags and examples: bmqa_jax/cli/evaluate.py
(`python launch/evaluate.py --help`).

Evaluates a trained workdir: PLCC, SRCC, KRCC, RMSE overall and per device.
"""

from bmqa_jax import cli

if __name__ == "__main__":
  cli.evaluate()
