r"""One markdown table of several evaluated runs, beside the paper's Table 1/2.

  bmqa-report runs/ablation_*            # after bmqa-evaluate
  bmqa-report --out=table2.md runs/ablation_a runs/ablation_e

Reads WORKDIR/config.json and WORKDIR/eval/metrics.json of each workdir.
"""

from absl import app
from absl import flags

from bmqa_jax.experiments import report

_OUT = flags.DEFINE_string("out", None, "Also write the table to this file.")


def main(argv):
  workdirs = argv[1:]
  if not workdirs:
    raise app.UsageError("name one or more training workdirs")
  table = report.markdown(report.collect(workdirs))
  print(table, end="")
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      f.write(table)
