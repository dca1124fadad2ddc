"""Keep freed memory in the process (glibc malloc) so that big temporaries do not page-fault.

By default glibc returns freed memory above a few hundred KiB to the OS (munmap, heap trimming); the
next tensor of that size gets fresh pages, and the kernel faults and zeroes every 4 KiB of them on
first touch. A sparse model allocates more short-lived tensors than the dense one (the gathered
inputs of its grouped convs), so it pays more, by an amount that depends on the process's heap
history (`benchmarks/allocator.md`). This is what jemalloc or tcmalloc
(LD_PRELOAD), which PyTorch's CPU tuning guide recommends, would do; `tune_cpu_allocator` does it
from inside the process with three `mallopt` settings: no eager trimming (up to `keep_bytes` kept),
64 MiB of padding on heap growth, and every block served from the heap, never by mmap (glibc caps
the mmap threshold at 32 MiB: larger blocks would be mapped and faulted afresh on every call;
`benchmarks/models-cpu-b64.json`). A heap fragmented
by mixed sizes can still fault now and then: it makes faults rare, not impossible; and memory freed
below the heap's top stays with the process until it exits.

It changes the whole process, so the library never calls it on import: a training script calls it
once at start, and `rbgp bench` calls it unless `--allocator default` is given.
"""

from __future__ import annotations

import ctypes
import platform

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4
TOP_PAD = 64 << 20
ALLOCATORS = ("tuned", "default")

_state = "default"


def tune_cpu_allocator(keep_bytes: int = 1 << 30) -> bool:
    """Make glibc keep up to `keep_bytes` of freed memory for reuse (process-wide, from now on).

    Returns True when the settings took effect, False where the C library is not glibc (nothing is
    changed there; use jemalloc or tcmalloc through LD_PRELOAD instead). Calling it again is harmless.
    """
    global _state
    if isinstance(keep_bytes, bool) or not isinstance(keep_bytes, int) or not 0 < keep_bytes < 1 << 31:
        raise ValueError(f"keep_bytes must be an int in [1, 2**31 - 1] (mallopt takes an int), got {keep_bytes!r}")
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    settings = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, keep_bytes), (_M_TOP_PAD, TOP_PAD))
    ok = all(libc.mallopt(param, value) == 1 for param, value in settings)
    if ok:
        _state = "tuned"
    return ok


def allocator_state() -> str:
    """'tuned' once `tune_cpu_allocator` succeeded in this process, else 'default'."""
    return _state
