"""The project's one logger, `logging.getLogger("bmqa_jax")`.

The library's messages to the user (what a run read, resumed, saved, measured)
go through it: functions that report take `log`, by default `info` here (a
caller may still pass its own callable, e.g. `lines.append` to keep them). By default it writes
each message as one plain line to standard output, as `print` did, so the
console of every launcher reads line for line as before; a program that embeds
the library can change that in one place (a level, other handlers).
"""

from __future__ import annotations

import logging
import sys


class _Stdout(logging.Handler):
  """Each message as a line of the `sys.stdout` of the moment it is written
  (a launcher's redirection or a test's capture may replace it after import)."""

  def emit(self, record: logging.LogRecord) -> None:
    try:
      sys.stdout.write(self.format(record) + "\n")
      sys.stdout.flush()
    except Exception:  # pylint: disable=broad-except
      self.handleError(record)


LOGGER = logging.getLogger("bmqa_jax")
LOGGER.setLevel(logging.INFO)
LOGGER.addHandler(_Stdout())
LOGGER.propagate = False  # absl's root handler would print each line again, prefixed

info = LOGGER.info
