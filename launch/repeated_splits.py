r"""Trains and tests a config on N scene-wise random 8:1:1 splits (Sec. 5.1.1).

  python launch/repeated_splits.py --config=configs/biq2021.py --workdir=runs/biq_rs
  python launch/repeated_splits.py --config=configs/quickstart.py:modalities=image \
      --workdir=runs/qs_rs --num_splits=5

Each split gets its own manifest, training run and test evaluation under
WORKDIR/split_<seed>/; the table of mean ± std and median over the splits is
printed and written to WORKDIR/repeated_splits.{json,md}. Re-running the same
command resumes: finished splits are skipped, an interrupted one resumes from
its checkpoint.
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from bmqa_jax.experiments import repeated

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file; "
                                          "its data (any kind) is re-split.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Holds one sub-folder per split.")
_NUM_SPLITS = flags.DEFINE_integer("num_splits", 10, "How many random splits.")
_FIRST_SEED = flags.DEFINE_integer("first_seed", 0, "Split k uses seed first_seed + k.")
_FRACTIONS = flags.DEFINE_list("fractions", ["0.8", "0.1", "0.1"],
                               "train,val,test fractions of the scenes.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every file at INFO
  repeated.run_repeated(_CONFIG.value, _WORKDIR.value, num_splits=_NUM_SPLITS.value,
                      first_seed=_FIRST_SEED.value,
                      fractions=tuple(float(x) for x in _FRACTIONS.value))


if __name__ == "__main__":
  app.run(main)
