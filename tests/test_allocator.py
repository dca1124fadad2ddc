"""rbgp.tune_cpu_allocator: big temporaries reuse the process's memory instead of page-faulting."""

import platform
import subprocess
import sys

import pytest

from rbgp.allocator import allocator_state, tune_cpu_allocator

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# A tensor of argv[2] MiB is filled and freed; prints the resident memory (MiB) before and after the free.
SCRIPT = """
import os, sys, torch
import rbgp
if sys.argv[1] == "tuned":
    assert rbgp.tune_cpu_allocator()
def rss_mib():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
t = torch.empty(int(sys.argv[2]) << 18)
t.fill_(1.0)
before = rss_mib()
del t
print(before, rss_mib())
"""


def _rss_drop_mib(mode: str, mib: int) -> float:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode, str(mib)], capture_output=True, text=True, check=True)
    before, after = map(float, out.stdout.split()[-2:])
    return before - after


@pytest.mark.skipif(not GLIBC, reason="the tuning is for glibc's malloc")
@pytest.mark.parametrize("mib", [24, 48])  # 48 MiB: above glibc's largest mmap threshold (32 MiB)
def test_tuned_allocator_keeps_freed_memory_for_reuse(mib):
    assert _rss_drop_mib("default", mib) > mib - 4  # glibc hands the block back to the OS: fresh pages next time
    assert _rss_drop_mib("tuned", mib) < 1  # kept in the heap: the next tensor of that size reuses it


@pytest.mark.parametrize("bad", [0, -1, 1 << 31, 2.5, True, "1G"])
def test_bad_keep_bytes_is_refused(bad):
    with pytest.raises(ValueError, match="keep_bytes must be an int"):
        tune_cpu_allocator(bad)


@pytest.mark.skipif(not GLIBC, reason="the tuning is for glibc's malloc")
def test_state_is_reported():
    assert tune_cpu_allocator() is True
    assert allocator_state() == "tuned"
