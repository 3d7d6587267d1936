"""`bmqa-cost-table` from a clone; flags and examples: bmqa_jax/cli/cost_table.py
(`python launch/cost_table.py --help`).

Prints the cost table of the image encoders (issue 3, item 5) as markdown.
"""

from bmqa_jax import cli

if __name__ == "__main__":
  cli.cost_table()
