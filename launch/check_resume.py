"""`bmqa-check-resume` from a clone; flags and examples: bmqa_jax/cli/check_resume.py
(`python launch/check_resume.py --help`).

Kills training at random moments; checks that resuming gives the same weights.
"""

from bmqa_jax import cli

if __name__ == "__main__":
  cli.check_resume()
