r"""Trains BMQA: every stage of the config, resuming from the workdir.

  bmqa-train --config=quickstart --workdir=runs/quickstart
  bmqa-train --config=mliq:img=convnext_base --workdir=W --dry_run
  python launch/train.py --config=configs/quickstart.py --workdir=runs/quickstart

--config takes a packaged config's name (quickstart, biq2021, mliq, ablation,
dark4k, asr, captioner) or a config file, with :key=value arguments;
--config.FIELD=VALUE sets any field. --dry_run builds every stage's model
(shapes only: nothing is initialised) and one batch of its data, prints
parameter counts and shapes, and trains nothing.

The data are read and checked before anything is written to the workdir. The
workdir keeps the config of its first run (config.json); a later run whose
config changes what is trained (a learning rate, a tower, a stage) stops with
the changed fields, unless --config_change=allow. Only one run may use a
workdir at a time (WORKDIR/.lock).

Several processes: --multihost reads the cluster from SLURM
(launch/slurm/train.sbatch) or Cloud TPU (launch/tpu/train.sh) variables;
--coordinator=HOST:PORT --num_processes=N --process_id=I for any other
scheduler. The workdir must be on a filesystem every process sees.
"""

from absl import flags
from absl import logging

from bmqa_jax import runtime
from bmqa_jax.bmqa import train
from bmqa_jax.cli import config_flag
from bmqa_jax.cli import errors
from bmqa_jax.experiments import descriptions

_CONFIG = config_flag.DEFINE_config("config", None, "Experiment config: a name "
                                    "(quickstart) or a file, with :key=value args.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, logs and the "
                               "tokenizer go; the run resumes from here.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Build every stage's model (shapes "
                             "only) and first batch, print parameter counts and "
                             "shapes, train nothing.")
_CONFIG_CHANGE = flags.DEFINE_enum(
    "config_change", "refuse", ["refuse", "allow"],
    "When the workdir's config.json differs from --config in a field that "
    "changes training (anything but logging/eval/checkpoint cadence, see "
    "bmqa_jax.train_lib.workdir.SAFE_CONFIG_CHANGES): 'refuse' (stop with the changed "
    "fields) or 'allow' (continue with the new config, recorded in "
    "config_changes.jsonl).")
runtime.define_flags()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every file at INFO
  runtime.start()
  cfg, workdir = _CONFIG.value, errors.check_workdir(_WORKDIR.value)
  describe = descriptions.for_training(cfg, workdir)
  if _DRY_RUN.value:
    train.dry_run(cfg, workdir, describe=describe)
  else:
    train.train_and_evaluate(cfg, workdir, config_change=_CONFIG_CHANGE.value,
                             describe=describe, progress=True)
