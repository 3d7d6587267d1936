"""`bmqa-caption` from a clone; flags and examples: bmqa_jax/cli/caption.py
(`python launch/caption.py --help`).

Captions image files with a trained captioner (paper Eq. 16, Fig. 11).
"""

from bmqa_jax import cli

if __name__ == "__main__":
  cli.caption()
