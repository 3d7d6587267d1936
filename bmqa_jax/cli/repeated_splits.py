r"""Trains and tests a config on N scene-wise random 8:1:1 splits (Sec. 5.1.1).

  bmqa-repeated-splits --config=biq2021 --workdir=runs/biq_rs
  bmqa-repeated-splits --config=quickstart:modalities=image \
      --workdir=runs/qs_rs --num_splits=5

Each split gets its own manifest, training run and test evaluation under
WORKDIR/split_<seed>/; the table of mean ± std and median over the splits is
printed and written to WORKDIR/repeated_splits.{json,md}. Re-running the same
command resumes: finished splits are skipped, an interrupted one resumes from
its checkpoint.
"""

from absl import flags
from absl import logging

from bmqa_jax.cli import config_flag
from bmqa_jax.cli import errors
from bmqa_jax.experiments import repeated

_CONFIG = config_flag.DEFINE_config(
  "config", None, "Experiment config (a name or a file); its data (any kind) is re-split."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Holds one sub-folder per split.")
_NUM_SPLITS = flags.DEFINE_integer("num_splits", 10, "How many random splits.")
_FIRST_SEED = flags.DEFINE_integer("first_seed", 0, "Split k uses seed first_seed + k.")
_FRACTIONS = flags.DEFINE_list(
  "fractions", ["0.8", "0.1", "0.1"], "train,val,test fractions of the scenes."
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every file at INFO
  repeated.run_repeated(
    _CONFIG.value,
    errors.check_workdir(_WORKDIR.value),
    num_splits=_NUM_SPLITS.value,
    first_seed=_FIRST_SEED.value,
    fractions=tuple(float(x) for x in _FRACTIONS.value),
  )
