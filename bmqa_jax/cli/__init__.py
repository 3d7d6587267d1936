"""The installed commands: `bmqa-score`, `bmqa-train`, `bmqa-evaluate`, ...

One module per command (`bmqa_jax/cli/<name>.py`: its flags, `main`, and the
usage in its docstring); setup.cfg installs each as `bmqa-<name>` (underscores
as dashes), and `launch/<name>.py` runs the same function from a clone. Every
command ends a mistake with one `error: …` line and a hint, exit status 2
(`errors.run`; `--verbose` adds the traceback).

The commands that run JAX models first restart their process with glibc's
tunables (`bmqa_jax.huge_pages`: XLA's buffers kept, in huge pages), before
anything imports JAX: this package imports nothing heavy, and each command's
module is imported after.
"""

import importlib
import sys

from bmqa_jax import huge_pages
from bmqa_jax.cli import errors


def _command(name: str, restart: bool):
  def command() -> None:
    if restart:
      huge_pages.restart()
    errors.run(importlib.import_module(f"{__name__}.{name}"))

  command.__name__ = command.__qualname__ = name
  command.__doc__ = f"`bmqa-{name.replace('_', '-')}`: see bmqa_jax/cli/{name}.py."
  return command


def command_line(name: str) -> list[str]:
  """argv that runs command `name` in a fresh Python (installed or not)."""
  return [sys.executable, "-c", f"from bmqa_jax import cli; cli.{name}()"]


score = _command("score", restart=True)
train = _command("train", restart=True)
evaluate = _command("evaluate", restart=True)
benchmark = _command("benchmark", restart=True)
benchmark_train = _command("benchmark_train", restart=True)
train_asr = _command("train_asr", restart=True)
train_captioner = _command("train_captioner", restart=True)
baselines = _command("baselines", restart=False)
build_dataset = _command("build_dataset", restart=False)
build_shipped_model = _command("build_shipped_model", restart=False)
build_tfds = _command("build_tfds", restart=False)
caption = _command("caption", restart=False)
check_resume = _command("check_resume", restart=False)
convert_weights = _command("convert_weights", restart=False)
cost_table = _command("cost_table", restart=False)
repeated_splits = _command("repeated_splits", restart=False)
report = _command("report", restart=False)
transcribe = _command("transcribe", restart=False)
