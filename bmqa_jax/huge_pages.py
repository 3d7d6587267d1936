"""Transparent huge pages for XLA's per-step buffers (glibc's ``hugetlb`` tunable).

XLA:CPU allocates a step's temporaries afresh at every call, in blocks far
above glibc's 32 MB mmap threshold, and glibc hands such a block back to the
kernel when it is freed: every training step faults its buffers in again,
4 KiB at a time, and the faults cost system time in every step. With glibc's
tunable ``glibc.malloc.hugetlb=1`` (glibc ≥ 2.35) malloc advises
``MADV_HUGEPAGE`` on those blocks, and a kernel whose transparent huge pages
are in ``madvise`` mode (the usual default) backs them with 2 MiB pages: a
few hundred faults a step instead of hundreds of thousands (what that buys:
docs/performance.md, measured with ``launch/benchmark.py``).

glibc reads its tunables once, when the process starts. So `restart()`, the
first statement of each launch script, replaces the script's process
(``os.execve``: same pid, arguments and environment, plus the tunable) before
it imports JAX, at the cost of one interpreter start. It leaves the process as
it is where the kernel's mode is not ``madvise`` (``always`` needs no advice,
``never`` takes none), off glibc ≥ 2.35, where GLIBC_TUNABLES already sets
``glibc.malloc.hugetlb`` (the user's choice wins), or with ``BMQA_HUGE_PAGES=0``.
In a notebook, start Jupyter with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``.
"""

from __future__ import annotations

import os
import platform
import sys

_NAME = "glibc.malloc.hugetlb"
TUNABLE = f"{_NAME}=1"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"
# Set in the restarted process, to GLIBC_TUNABLES's value before ('' if unset):
# `original_environ()` undoes the restart for a child that should not have it.
_ADDED = "BMQA_HUGE_PAGES_ADDED"


def thp_mode(path: str = THP_MODE_FILE) -> str | None:
  """The kernel's transparent-huge-page mode ('always', 'madvise', 'never'),
  None where it cannot be read."""
  try:
    with open(path, encoding="ascii") as f:
      text = f.read()
  except OSError:
    return None
  start, end = text.find("["), text.find("]")
  return text[start + 1 : end] if 0 <= start < end else None


def glibc_has_tunable() -> bool:
  lib, version = platform.libc_ver()
  try:
    return lib == "glibc" and tuple(map(int, version.split(".")[:2])) >= (2, 35)
  except ValueError:
    return False


def why_not(environ=None, mode: str | None = "auto") -> str | None:
  """Why `restart()` leaves this process alone; None when it restarts it."""
  environ = os.environ if environ is None else environ
  mode = thp_mode() if mode == "auto" else mode
  if environ.get("BMQA_HUGE_PAGES", "1") == "0":
    return "BMQA_HUGE_PAGES=0"
  if _NAME in environ.get("GLIBC_TUNABLES", ""):
    return f"GLIBC_TUNABLES={environ['GLIBC_TUNABLES']} (set before the start)"
  if not sys.platform.startswith("linux") or not glibc_has_tunable():
    return "not glibc >= 2.35"
  if mode != "madvise":
    return f"the kernel's transparent huge pages are {mode!r}, not 'madvise'"
  if not getattr(sys, "orig_argv", None):
    return "no command line to restart with"
  return None


def with_tunable(environ) -> dict:
  """`environ` with the tunable added to GLIBC_TUNABLES (':'-separated)."""
  env = dict(environ)
  before = env.get("GLIBC_TUNABLES", "")
  env["GLIBC_TUNABLES"] = f"{before}:{TUNABLE}" if before else TUNABLE
  env[_ADDED] = before
  return env


def original_environ(environ=None) -> dict:
  """`environ` as it was before `restart()` added the tunable (for a process
  that should run as its users run it, such as the PyTorch reference)."""
  env = dict(os.environ if environ is None else environ)
  if _ADDED in env:
    before = env.pop(_ADDED)
    if before:
      env["GLIBC_TUNABLES"] = before
    else:
      env.pop("GLIBC_TUNABLES", None)
  return env


def status(environ=None) -> str:
  """'on (…)' or 'off (why)' for a process started with `environ`."""
  environ = os.environ if environ is None else environ
  if _ADDED in environ:
    return f"on ({TUNABLE}, added by restart())"
  tunables = environ.get("GLIBC_TUNABLES", "")
  if _NAME in tunables:
    return f"GLIBC_TUNABLES={tunables}"
  why = why_not(environ)
  return f"off ({why})" if why else "off"


def restart() -> None:
  """Replaces this process with one that has the tunable (see the module's
  docstring); returns where it does nothing."""
  if why_not() is not None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv, with_tunable(os.environ))
