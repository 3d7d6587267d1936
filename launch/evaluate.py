r"""Evaluates a trained workdir: PLCC, SRCC, KRCC, RMSE overall and per device.

  python launch/evaluate.py --workdir=runs/quickstart
  python launch/evaluate.py --workdir=runs/quickstart --manifest=other/manifest.csv

Writes WORKDIR/eval/{metrics.json,report.md,scatter.png,predictions.csv}
(or --out_dir).
"""

from absl import app
from absl import flags
from absl import logging

from bmqa_jax import evaluate

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir.")
_MANIFEST = flags.DEFINE_string("manifest", None, "Evaluate every row of this "
                                "manifest instead of the run's test split.")
_SPLIT = flags.DEFINE_string("split", "test", "Split of the run's own dataset.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Default: WORKDIR/eval.")
flags.mark_flag_as_required("workdir")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every file at INFO
  evaluate.evaluate_workdir(_WORKDIR.value, manifest=_MANIFEST.value,
                            split=_SPLIT.value, out_dir=_OUT_DIR.value)


if __name__ == "__main__":
  app.run(main)
