r"""Trains the speech recogniser; see configs/asr.py for the commands.

bmqa-train-asr --config=asr:manifest=M.csv --workdir=DIR
"""

from absl import flags
from absl import logging

from bmqa_jax import runtime
from bmqa_jax.cli import config_flag
from bmqa_jax.cli import errors
from bmqa_jax.speech import train

_CONFIG = config_flag.DEFINE_config(
  "config", None, "ASR config: a name (asr) or a file, with :key=value args."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder (resumed when it has checkpoints).")
runtime.define_flags()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  runtime.start()
  config = _CONFIG.value
  metrics = train.train_and_evaluate(config, errors.check_workdir(_WORKDIR.value))
  logging.info("done: %s", metrics)
  print({k: metrics[k] for k in ("greedy", "beam")})
