"""`bmqa-build-shipped-model` from a clone; flags and examples: bmqa_jax/cli/build_shipped_model.py
(`python launch/build_shipped_model.py --help`).

Rebuilds the model shipped in the package (bmqa_jax/bmqa/assets/).
"""

from bmqa_jax import cli

if __name__ == "__main__":
  cli.build_shipped_model()
