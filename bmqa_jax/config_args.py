r"""The typed `key=value` argument of a config file (big_vision's `parse_arg`).

A config file's argument is the part after `:` in
`--config=configs/quickstart.py:modalities=image,tiny=True`; ml_collections
passes it, as one string, to the file's `get_config(arg)`. Every config in
`configs/` reads it with `parse_arg`, so all of them follow the same rules:

  from bmqa_jax import config_args

  def get_config(arg=None):
    args = config_args.parse_arg(arg, img="resnet_tiny", tiny=False, steps=300,
                                 lr=1e-3, init=None, epochs=(None, float))
    # get_config("tiny=True,steps=20").steps == 20, .tiny is True, .img the default

Rules:

* the argument is a comma-separated list of `key=value` items (spaces around
  keys and values are stripped; empty items are skipped); `None` or `""` gives
  the defaults;
* every key must be one of the defaults' names: an unknown key, a bare word
  without `=`, or a key given twice is a `ValueError` that names it (and, for
  an unknown key, lists the known ones);
* a value takes the type of its default: a bool default accepts exactly
  `True` or `False` (not `true`, `1` or `yes`); an int or float default parses
  the value as one (else a `ValueError` naming the key and the value); a str
  default, or a default of `None`, keeps the string as it is;
* a default may instead be a pair `(default, type)`: the value given is
  converted by `type` (`bool` follows the rule above) and the default is kept
  as it is, e.g. `epochs=(None, float)`: a float when given, else `None` (for
  a default the config works out itself).

The result is a `ConfigDict` of every key (given or default) whose fields are
locked: a misspelt `args.runlcoal` raises instead of returning a new field.
"""

from __future__ import annotations

from typing import Any, Callable

import ml_collections

_BOOLS = {"True": True, "False": False}


def _spec(name: str, default: Any) -> tuple[Any, Callable[[str], Any]]:
  """(default, converter) of one argument."""
  if isinstance(default, tuple) and len(default) == 2 and isinstance(default[1], type):
    default, kind = default
  elif default is None:
    kind = str
  else:
    kind = type(default)
    if kind not in (bool, int, float, str):
      raise TypeError(
        f"config argument {name!r}: default {default!r} is not "
        "a bool, int, float, str or None; give (default, type)"
      )
  return default, kind


def _convert(name: str, value: str, kind: Callable[[str], Any]) -> Any:
  if kind is bool:
    if value not in _BOOLS:
      raise ValueError(f"config argument {name}={value!r}: expected True or False")
    return _BOOLS[value]
  if kind is str:
    return value
  try:
    return kind(value)
  except ValueError:
    raise ValueError(
      f"config argument {name}={value!r}: expected {getattr(kind, '__name__', kind)}"
    ) from None


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses a config file's `key=value,...` argument against typed `defaults`.

  Args:
    arg: the string after `:` in `--config=FILE:arg` (or `get_config`'s
      argument); `None` or `""` for the defaults.
    **defaults: every accepted key with its default value, whose type is the
      type of the value (bool: exactly `True`/`False`; int; float; str; `None`
      means a str), or `(default, type)` to give the type separately.

  Returns:
    A locked `ConfigDict` with one field per key of `defaults`.

  Raises:
    ValueError: an item without `=`, an unknown or repeated key, or a value
      that is not of its default's type.

  Example:
    >>> a = parse_arg("img=vit_tiny,runlocal=True,lr=1e-3",
    ...               img="resnet50", runlocal=False, lr=8e-5, steps=300)
    >>> a.img, a.runlocal, a.lr, a.steps
    ('vit_tiny', True, 0.001, 300)
  """
  specs = {k: _spec(k, v) for k, v in defaults.items()}
  given: dict[str, Any] = {}
  for item in (arg or "").split(","):
    item = item.strip()
    if not item:
      continue
    if "=" not in item:
      raise ValueError(
        f"config argument {item!r} is not key=value "
        f"(known keys: {', '.join(sorted(specs)) or 'none'})"
      )
    key, value = (s.strip() for s in item.split("=", 1))
    if key not in specs:
      raise ValueError(
        f"unknown config argument {key!r} (known keys: {', '.join(sorted(specs)) or 'none'})"
      )
    if key in given:
      raise ValueError(f"config argument {key!r} is given twice")
    given[key] = _convert(key, value, specs[key][1])
  out = ml_collections.ConfigDict({k: given.get(k, default) for k, (default, _) in specs.items()})
  out.lock()
  return out
