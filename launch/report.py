"""`bmqa-report` from a clone; flags and examples: bmqa_jax/cli/report.py
(`python launch/report.py --help`).

One markdown table of several evaluated runs, beside the paper's Table 1/2.
"""

from bmqa_jax import cli

if __name__ == "__main__":
  cli.report()
