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

SIGTERM or SIGINT (Ctrl-C) on any process saves a checkpoint of the step
under way on every process and exits (status 143 / 130) with one line; the
same command resumes (bmqa_jax/stop.py, --stop_grace_s). --profile_steps=5:10
writes a jax.profiler trace of those steps to WORKDIR/profile.
"""

import os

from absl import flags
from absl import logging

from bmqa_jax import runtime
from bmqa_jax.bmqa import train
from bmqa_jax.cli import config_flag
from bmqa_jax.cli import errors
from bmqa_jax.experiments import descriptions
from bmqa_jax.train_lib import loop

_CONFIG = config_flag.DEFINE_config(
  "config", None, "Experiment config: a name (quickstart) or a file, with :key=value args."
)
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Where checkpoints, logs and the tokenizer go; the run resumes from here."
)
_DRY_RUN = flags.DEFINE_bool(
  "dry_run",
  False,
  "Build every stage's model (shapes "
  "only) and first batch, print parameter counts and "
  "shapes, train nothing.",
)
_CONFIG_CHANGE = flags.DEFINE_enum(
  "config_change",
  "refuse",
  ["refuse", "allow"],
  "When the workdir's config.json differs from --config in a field that "
  "changes training (anything but logging/eval/checkpoint cadence, see "
  "bmqa_jax.train_lib.workdir.SAFE_CONFIG_CHANGES): 'refuse' (stop with the changed "
  "fields) or 'allow' (continue with the new config, recorded in "
  "config_changes.jsonl).",
)
_PROFILE_STEPS = flags.DEFINE_string(
  "profile_steps",
  None,
  "FIRST:LAST: trace these steps (1-based) of the first "
  "stage that runs them with jax.profiler into WORKDIR/profile (TensorBoard: "
  "tensorboard --logdir=WORKDIR/profile, the Profile tab).",
)
runtime.define_flags()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every file at INFO
  runtime.start()
  cfg, workdir = _CONFIG.value, errors.check_workdir(_WORKDIR.value)
  describe = descriptions.for_training(cfg, workdir)
  if _PROFILE_STEPS.value:
    first, last = _steps(_PROFILE_STEPS.value)
    loop.profile(first, last, os.path.join(workdir, "profile"))
  if _DRY_RUN.value:
    train.dry_run(cfg, workdir, describe=describe)
  else:
    train.train_and_evaluate(
      cfg, workdir, config_change=_CONFIG_CHANGE.value, describe=describe, progress=True
    )


def _steps(text: str) -> tuple[int, int]:
  try:
    first, last = (int(x) for x in text.split(":"))
  except ValueError:
    first = last = 0
  if not 1 <= first <= last:
    raise flags.ValidationError(
      f"--profile_steps={text}: give FIRST:LAST, two step numbers from 1, e.g. 5:10"
    )
  return first, last
