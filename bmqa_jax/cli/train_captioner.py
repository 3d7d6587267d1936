r"""Trains the QSD captioner (Show-Attend-Tell); see configs/captioner.py.

bmqa-train-captioner --config=captioner --workdir=runs/captioner
"""

from absl import flags
from absl import logging

from bmqa_jax import runtime
from bmqa_jax.cli import config_flag
from bmqa_jax.cli import errors
from bmqa_jax.captioner import train

_CONFIG = config_flag.DEFINE_config(
  "config", None, "Captioner config: a name (captioner) or a file, with :key=value args."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder (resumed when it has checkpoints).")
runtime.define_flags()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  runtime.start()
  logging.set_verbosity(logging.WARNING)  # orbax logs every file at INFO
  metrics = train.train_and_evaluate(_CONFIG.value, errors.check_workdir(_WORKDIR.value))
  print({k: metrics[k] for k in ("top5_accuracy", "greedy", "beam")})
