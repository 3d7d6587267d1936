"""`bmqa-benchmark` from a clone; flags and examples: bmqa_jax/cli/benchmark.py
(`python launch/benchmark.py --help`).

Image-encoder speed, Flax against the PyTorch reference in the same run.
"""

from bmqa_jax import cli

if __name__ == "__main__":
  cli.benchmark()
