"""XLA's per-step buffers kept in the process, in huge pages (glibc tunables).

XLA:CPU allocates a step's temporaries afresh at every call, in blocks far
above glibc's 32 MB mmap threshold (its buffers, and the packed operands of
Eigen's convolutions), and glibc hands such a block back to the kernel when it
is freed: every training step faults its buffers in again, and the kernel
zeroes every page. On a VM that reports freed memory to its host (virtio
free page reporting), the host backs those pages again as well, and the
faults cost seconds of system time in every step (docs/performance.md).

So `restart()`, the first statement of each launch script, replaces the
script's process (``os.execve``: same pid, arguments and environment, plus
`TUNABLES`) before it imports JAX, at the cost of one interpreter start:

* ``glibc.malloc.arena_max=1``, ``glibc.malloc.mmap_max=0`` and a
  ``glibc.malloc.trim_threshold`` no step reaches: every thread allocates from
  the main heap, large blocks included, and freed memory stays there for the
  next step (a thread's own arena would still ``mmap`` blocks above 64 MB);
* ``glibc.malloc.hugetlb=1``: malloc advises ``MADV_HUGEPAGE`` on its memory,
  and a kernel whose transparent huge pages are in ``madvise`` mode (the usual
  default) backs it with 2 MiB pages: the first step's faults are a few
  hundred instead of hundreds of thousands.

glibc reads its tunables once, when the process starts. `restart()` leaves the
process as it is where the kernel's mode is not ``madvise`` (``always`` needs
no advice, ``never`` takes none), off glibc >= 2.35, where GLIBC_TUNABLES
already sets ``glibc.malloc.hugetlb`` (the user's choice wins; so does any
other tunable of `TUNABLES` that it sets), or with ``BMQA_HUGE_PAGES=0``. In a
notebook, start Jupyter with ``GLIBC_TUNABLES`` set to `TUNABLE`'s value.
"""

from __future__ import annotations

import os
import platform
import sys

_NAME = "glibc.malloc.hugetlb"
TUNABLES = (
  f"{_NAME}=1",
  "glibc.malloc.arena_max=1",
  "glibc.malloc.mmap_max=0",
  f"glibc.malloc.trim_threshold={1 << 40}",
)
TUNABLE = ":".join(TUNABLES)  # GLIBC_TUNABLES's value when none was set before
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
  """`environ` with the `TUNABLES` that its GLIBC_TUNABLES does not set added
  (':'-separated)."""
  env = dict(environ)
  before = env.get("GLIBC_TUNABLES", "")
  mine = {t.split("=")[0] for t in before.split(":")}
  added = [t for t in TUNABLES if t.split("=")[0] not in mine]
  env["GLIBC_TUNABLES"] = ":".join(([before] if before else []) + added)
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
    return f"on ({environ.get('GLIBC_TUNABLES')}, added by restart())"
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
