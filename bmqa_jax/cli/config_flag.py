"""`--config`: a packaged config by name, or a config file; its argument; and
`--config.FIELD=VALUE` overrides (ml_collections' config flag underneath).

  --config=quickstart                         bmqa_jax/configs/quickstart.py
  --config=quickstart:tiny=True               its argument (bmqa_jax.config_args)
  --config=configs/quickstart.py:tiny=True    a file (the repository's, or your own)
  --config.st.learning_rate=1e-4              a field of the config

The packaged configs are the repository's `configs/` folder, installed as
`bmqa_jax.configs`. A mistake is a `ConfigError` (an absl flags error, which
the commands print as one `error:` line) that names it: an unknown name or a
missing file (with the packaged names), an argument the config refuses, an
override of a field the config lacks (with the closest names).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
import pkgutil
import re
import sys

from absl import flags
from ml_collections import config_flags
from ml_collections.config_flags import config_path

from bmqa_jax import configs as packaged


class ConfigError(flags.Error):
  """A --config value or override that names no config or field."""


def names() -> list[str]:
  """The packaged configs' names."""
  return sorted(
    m.name for m in pkgutil.iter_modules(packaged.__path__) if not m.name.startswith("_")
  )


def load(value: str):
  """The config that `--config=value` names (NAME[:arg] or FILE[:arg])."""
  head, colon, arg = value.partition(":")
  if head.endswith(".py") or "/" in head or os.sep in head:
    if not os.path.isfile(head):
      raise ConfigError(
        f"--config={value}: no config file {head!r} (in {os.getcwd()}); "
        f"the packaged configs go by name: {', '.join(names())}"
      )
    load_module = lambda: _load_file(head)  # noqa: E731
  elif head in names():
    load_module = lambda: importlib.import_module(f"{packaged.__name__}.{head}")  # noqa: E731
  else:
    close = difflib.get_close_matches(head, names(), 1)
    raise ConfigError(
      f"--config={value}: no packaged config {head!r}"
      + (f" (did you mean {close[0]!r}?)" if close else "")
      + f"; the names are {', '.join(names())}, or give a file "
      "(path/to/config.py)"
    )
  try:
    module = load_module()
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f"--config={value}: cannot load {head} ({type(e).__name__}: {e})") from e
  try:
    return module.get_config(arg) if colon else module.get_config()
  except (ValueError, TypeError, KeyError) as e:
    raise ConfigError(f"--config={value}: {e}") from e


def _load_file(path: str):
  spec = importlib.util.spec_from_file_location("config_file", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def check_override(config, field: str, flag: str = "config") -> None:
  """Raises ConfigError when `--flag.field` names no field of `config`."""
  try:
    config_path.get_value(field, config)
    return
  except Exception as e:  # pylint: disable=broad-except
    error = e
  node, parts = config, field.split(".")
  for i, part in enumerate(parts):
    where = ".".join([flag] + parts[:i])
    if not hasattr(node, "keys"):
      raise ConfigError(f"--{flag}.{field}: {where} is a value, not a group of fields")
    keys = [str(k) for k in node.keys()]
    if part not in keys:
      close = difflib.get_close_matches(part, keys, 3)
      raise ConfigError(
        f"--{flag}.{field}: {where} has no field {part!r}"
        + (
          f"; did you mean {' or '.join(repr(c) for c in close)}?"
          if close
          else f"; its fields: {', '.join(sorted(keys))}"
        )
      )
    node = node[part]
  raise ConfigError(f"--{flag}.{field}: {error}")


class _Parser(flags.ArgumentParser):
  """Loads by name or file (`load`) and checks the overrides on the command line."""

  def __init__(self, name: str):
    self.name = name

  def flag_type(self):
    return "config object"

  def parse(self, argument):
    config = load(argument)
    for arg in sys.argv[1:]:
      m = re.match(rf"^--?(?:no)?{re.escape(self.name)}\.([^=]+)", arg)
      if m:
        check_override(config, m.group(1), self.name)
    config.lock()
    return config


def DEFINE_config(
  name: str = "config",
  default: str | None = None,  # pylint: disable=invalid-name
  help_string: str = "A packaged config's name or a config file, "
  "with :key=value arguments (e.g. quickstart:tiny=True)",
  flag_values: flags.FlagValues = flags.FLAGS,
) -> flags.FlagHolder:
  """ml_collections' config flag that takes names too (see the module's doc)."""
  holder = config_flags.DEFINE_config_file(name, None, help_string, flag_values=flag_values)
  flag_values[name].parser = _Parser(name)
  if default is not None:
    flag_values.set_default(name, default)
  return holder
