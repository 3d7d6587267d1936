"""bmqa_jax.huge_pages: a launch script restarts itself with glibc's
tunables; malloc's large blocks then fault in 2 MiB at a time, and a block
freed and allocated again (XLA's buffers at every step) faults no more."""

import os
import subprocess
import sys

import pytest

from bmqa_jax import huge_pages

# Prints a line, restarts (a launch script's first statement), then reports its
# pid, argv, GLIBC_TUNABLES, the minor faults of touching a fresh 64 MiB malloc
# block in a thread (glibc mmaps blocks that large; XLA's threads allocate its
# step buffers) and the MiB of it still resident after it was freed.
_SCRIPT = r"""
import ctypes, os, resource, sys, threading
from bmqa_jax import huge_pages
if os.environ.get("BMQA_HUGE_PAGES_ADDED") is None:
  print("pid", os.getpid(), flush=True)
huge_pages.restart()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
n = 64 << 20
def resident():
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
out = []
def step():
  before, faults = resident(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  p = libc.malloc(n)
  ctypes.memset(p, 1, n)
  out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
  libc.free(p)
  out.append((resident() - before) >> 20)
thread = threading.Thread(target=step)
thread.start()
thread.join()
print("pid", os.getpid())
print("argv", sys.argv[1:])
print("tunables", os.environ.get("GLIBC_TUNABLES"))
print("status", huge_pages.status())
print("faults", *out)
"""


def _run(env_changes):
  env = {
    k: v
    for k, v in os.environ.items()
    if k not in ("GLIBC_TUNABLES", "BMQA_HUGE_PAGES", "BMQA_HUGE_PAGES_ADDED")
  }
  env.update(env_changes)
  out = subprocess.run(
    [sys.executable, "-c", _SCRIPT, "--flag=1", "x"],
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
    check=True,
  ).stdout
  return out.splitlines()


@pytest.mark.skipif(
  huge_pages.why_not({}) is not None, reason=f"no restart here: {huge_pages.why_not({})}"
)
def test_restart_keeps_pid_and_arguments_and_malloc_keeps_huge_pages():
  lines = _run({})
  pids = [l for l in lines if l.startswith("pid")]
  assert len(pids) == 2 and pids[0] == pids[1], lines  # execve: the same process
  assert "argv ['--flag=1', 'x']" in lines
  assert f"tunables {huge_pages.TUNABLE}" in lines
  assert any(l.startswith("status on") for l in lines), lines
  huge, kept = map(int, lines[-1].split()[1:])

  off = _run({"BMQA_HUGE_PAGES": "0"})
  assert len([l for l in off if l.startswith("pid")]) == 2  # printed once, no restart
  assert "tunables None" in off and "status off (BMQA_HUGE_PAGES=0)" in off
  small, returned = map(int, off[-1].split()[1:])
  # 64 MiB in 4 KiB pages is 16,384 faults; in 2 MiB pages, 32.
  assert small > 10_000 and huge < 1_000, (small, huge)
  # Freed, the block stays in the process (the next step's buffers fault no
  # more); without the tunables glibc hands it back to the kernel.
  assert kept >= 60 and returned < 4, (kept, returned)


def test_the_users_tunables_win_and_are_restored_for_children():
  mine = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}
  assert "set before the start" in huge_pages.why_not(mine, mode="madvise")
  assert huge_pages.status(mine) == "GLIBC_TUNABLES=glibc.malloc.hugetlb=0"

  other = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "X": "1"}
  added = huge_pages.with_tunable(other)
  assert added["GLIBC_TUNABLES"] == ":".join(
    ["glibc.malloc.arena_max=2"] + [t for t in huge_pages.TUNABLES if "arena_max" not in t]
  )
  assert huge_pages.status(added).startswith("on")
  assert huge_pages.original_environ(added) == other
  assert huge_pages.original_environ(huge_pages.with_tunable({"X": "1"})) == {"X": "1"}


def test_no_restart_where_it_would_not_help(tmp_path):
  assert huge_pages.why_not({"BMQA_HUGE_PAGES": "0"}, mode="madvise") == "BMQA_HUGE_PAGES=0"
  if huge_pages.glibc_has_tunable() and sys.platform.startswith("linux"):
    assert "'always'" in huge_pages.why_not({}, mode="always")
    assert "'never'" in huge_pages.why_not({}, mode="never")
    assert "None" in huge_pages.why_not({}, mode=None)
  mode_file = tmp_path / "enabled"
  mode_file.write_text("always [madvise] never\n")
  assert huge_pages.thp_mode(str(mode_file)) == "madvise"
  mode_file.write_text("[always] madvise never\n")
  assert huge_pages.thp_mode(str(mode_file)) == "always"
  assert huge_pages.thp_mode(str(tmp_path / "missing")) is None
