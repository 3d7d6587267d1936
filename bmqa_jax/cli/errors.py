"""How every command ends on a mistake: `error: …` and a hint on stderr, exit
status 2, no traceback (`--verbose` shows it).

`run(module)` runs a command module's `main(argv)` under absl (its flags
parsed first, its docstring as `--help`). A mistake is an error of the
project's own (a class defined in bmqa_jax: a bad manifest row, a changed
config, a locked workdir, an unreadable image, ...) or one of the usual kinds
(a bad flag or config, a missing file, a value out of range, a missing extra
package); anything else is a bug, and its traceback is shown as it is. A
stop signal (`bmqa_jax.stop.Stopped`) ends with its one line and status
128 + the signal's number.
"""

from __future__ import annotations

import os
import sys
import traceback

from absl import app
from absl import flags

from bmqa_jax import stop

EXIT_MISTAKE = 2
_VERBOSE = flags.DEFINE_bool("verbose", False, "On an error, show its traceback too.")
_USUAL = (
  ValueError,
  OSError,
  ImportError,
  MemoryError,
  FloatingPointError,
  app.UsageError,
  flags.Error,
)
# Hints by the error's class name (the classes live in the layers below).
_HINTS = {
  "ConfigError": "--config takes a packaged config's name or a config file, "
  "then :key=value arguments; --config.FIELD=VALUE sets a field",
  "ManifestError": "a manifest is a CSV or JSONL file with the columns image, mos, "
  'scene (optional: text, audio, device, split); README, "Your own data"',
  "ConfigChangedError": "use a new --workdir, or --config_change=allow to go on "
  "with the new config",
  "ConfigMissingError": "put back WORKDIR/config.json, use a new --workdir, or "
  "--config_change=allow to go on with this config",
  "ShippedModelError": "reinstall the package (pip install --force-reinstall "
  "bmqa_jax), or score with your own --workdir",
  "DamagedCheckpointError": "training the same workdir again moves the damaged "
  "step to CHECKPOINTS.damaged/ and resumes from the "
  "newest good one",
  "WorkdirLockedError": "another run holds this workdir: wait for it, or stop it",
  "OutFileError": "--out names a .csv or .json file of bmqa-score's; --overwrite starts it again",
  "UsageError": "--help shows the command's usage and flags",
}


def is_mistake(e: BaseException) -> bool:
  return isinstance(e, _USUAL) or type(e).__module__.startswith("bmqa_jax.")


def message(e: BaseException) -> str:
  """The error as one line."""
  text = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
  return text or type(e).__name__


def hint(e: BaseException) -> str:
  for cls in type(e).__mro__:
    if cls.__name__ in _HINTS:
      return _HINTS[cls.__name__]
  if isinstance(e, flags.Error):
    return "--help lists the command's flags"
  return "--verbose shows the traceback"


def report(e: BaseException, verbose: bool) -> None:
  """Prints the error (and with `verbose` its traceback) and exits with 2."""
  if verbose:
    traceback.print_exception(e)
  print(f"error: {message(e)}\nhint: {hint(e)}", file=sys.stderr, flush=True)
  sys.exit(EXIT_MISTAKE)


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    if not is_mistake(e):
      raise
    report(e, "--verbose" in argv)


def run(module) -> None:
  """Runs `module.main` as a command (see the module's docstring)."""
  main_module = sys.modules.get("__main__")
  if main_module is not None and module.__doc__:
    main_module.__doc__ = module.__doc__  # absl's --help shows the command's
  for name in (module.__name__, __name__):  # ... and its flags
    for flag in flags.FLAGS.get_key_flags_for_module(name):
      flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)

  def main(argv):
    try:
      return module.main(argv)
    except stop.Stopped as e:  # a stop signal: one line, status 128 + signal
      print(e, file=sys.stderr, flush=True)
      sys.exit(e.code)
    except Exception as e:  # pylint: disable=broad-except
      if not is_mistake(e):
        raise
      report(e, _VERBOSE.value)

  app.run(main, flags_parser=_parse_flags)


def check_workdir(path: str) -> str:
  """`path` for a --workdir: refused when it is a file (the usual typo)."""
  if path and os.path.exists(path) and not os.path.isdir(path):
    raise NotADirectoryError(
      f"--workdir={path} is a file; a workdir is a folder (a new one, or one that a run made)"
    )
  return path
