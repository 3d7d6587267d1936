"""`bmqa-benchmark-train` from a clone; flags and examples:
bmqa_jax/cli/benchmark_train.py (`python launch/benchmark_train.py --help`).

What each training stage of a config costs, on the plan training runs.
"""

from bmqa_jax import cli

if __name__ == "__main__":
  cli.benchmark_train()
