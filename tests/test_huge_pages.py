"""bmqa_jax.huge_pages: a launch script restarts itself with glibc's hugetlb
tunable, and malloc's large blocks then fault in 2 MiB at a time."""

import os
import subprocess
import sys

import pytest

from bmqa_jax import huge_pages

# Prints a line, restarts (a launch script's first statement), then reports its
# pid, argv, GLIBC_TUNABLES and the minor faults of touching a fresh 64 MiB
# malloc block (glibc mmaps blocks that large, as XLA's step buffers).
_SCRIPT = r"""
import ctypes, os, resource, sys
from bmqa_jax import huge_pages
if os.environ.get("BMQA_HUGE_PAGES_ADDED") is None:
  print("pid", os.getpid(), flush=True)
huge_pages.restart()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
n = 64 << 20
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
p = libc.malloc(n)
ctypes.memset(p, 1, n)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print("pid", os.getpid())
print("argv", sys.argv[1:])
print("tunables", os.environ.get("GLIBC_TUNABLES"))
print("status", huge_pages.status())
print("faults", faults)
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
def test_restart_keeps_pid_and_arguments_and_malloc_gets_huge_pages():
  lines = _run({})
  pids = [l for l in lines if l.startswith("pid")]
  assert len(pids) == 2 and pids[0] == pids[1], lines  # execve: the same process
  assert "argv ['--flag=1', 'x']" in lines
  assert f"tunables {huge_pages.TUNABLE}" in lines
  assert any(l.startswith("status on") for l in lines), lines
  huge = int(lines[-1].split()[1])

  off = _run({"BMQA_HUGE_PAGES": "0"})
  assert len([l for l in off if l.startswith("pid")]) == 2  # printed once, no restart
  assert "tunables None" in off and "status off (BMQA_HUGE_PAGES=0)" in off
  small = int(off[-1].split()[1])
  # 64 MiB in 4 KiB pages is 16,384 faults; in 2 MiB pages, 32.
  assert small > 10_000 and huge < 1_000, (small, huge)


def test_the_users_tunables_win_and_are_restored_for_children():
  mine = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}
  assert "set before the start" in huge_pages.why_not(mine, mode="madvise")
  assert huge_pages.status(mine) == "GLIBC_TUNABLES=glibc.malloc.hugetlb=0"

  other = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "X": "1"}
  added = huge_pages.with_tunable(other)
  assert added["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
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
