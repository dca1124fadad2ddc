"""Resource limits: what a request (a mask, a model, a set of inputs) will cost, decided before
anything large is allocated, so that no input takes the machine down.

`check` refuses a request whose memory estimate (`Cost`) is above the limit with a one-line
`ResourceError` (a ValueError) naming the request, the estimate and the limit. The patterns' cost
models are in `rbgp.patterns.resources`.

The limit is half the memory available to this process (the smallest of /proc/meminfo MemAvailable,
the cgroup's memory.max headroom and the address space left under RLIMIT_AS, i.e. `ulimit -v`;
os.sysconf where /proc is missing), or the environment variable RBGP_MEMORY_LIMIT: a number of
bytes with an optional K, M, G or T suffix (powers of 1024: "2G", "512M", "1.5GiB"), or "unlimited"
to turn the check off.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

ENV_VAR = "RBGP_MEMORY_LIMIT"
MEMORY_FRACTION = 0.5
"""Default limit: this fraction of the memory available to the process."""

SECONDS_PER_BYTE = 1e-8
"""Rough build time per byte of estimated peak memory (measured builders touch each byte a few times
at a few hundred MB/s, numpy random permutations and sorts being the slow parts)."""

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_SIZE = re.compile(r"^\s*((?:\d+(?:\.\d*)?|\.\d+)(?:E[+-]?\d+)?)\s*([KMGTP]?)(?:I?B)?\s*$", re.IGNORECASE)


class ResourceError(ValueError):
    """A request needs more memory than the limit allows; raised before anything large is built."""


@dataclass(frozen=True)
class Cost:
    """Estimated peak memory (bytes) and build time (seconds) of one request."""

    bytes: int
    seconds: float

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.bytes + other.bytes, self.seconds + other.seconds)


def cost(nbytes: float, seconds: float | None = None) -> Cost:
    """A Cost of `nbytes` (rounded up) taking `seconds` (default: proportional to the bytes)."""
    nbytes = math.ceil(max(nbytes, 0.0))
    return Cost(nbytes, nbytes * SECONDS_PER_BYTE if seconds is None else float(seconds))


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB', 66e9 -> '61 GiB': two or three significant digits, binary units."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" or n >= 10 else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_seconds(s: float) -> str:
    if s < 1:
        return "under a second"
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if s >= 2 * size:
            return f"{s / size:.0f} {unit}"
    return f"{s:.0f} s"


def parse_size(text: str) -> int | None:
    """Bytes of a size such as '2G', '2gb', '512M', '1.5GiB', '1000000', '1e9'; None for 'unlimited'."""
    if text.strip().lower() in ("unlimited", "none", "inf"):
        return None
    match = _SIZE.match(text)
    if not match:
        raise ValueError(
            f"{ENV_VAR} must be a number of bytes with an optional K, M, G or T suffix "
            f"(e.g. 2G), or 'unlimited'; got {text!r}"
        )
    value = float(match.group(1)) * _UNITS[match.group(2).upper()]
    if not 1 <= value < 2**63:
        raise ValueError(f"{ENV_VAR} must be at least 1 byte and below 8 EiB, got {text!r}")
    return int(value)


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def _cgroup_headroom() -> int | None:
    """memory.max - memory.current of this process's cgroup (v2), when it has a limit."""
    try:
        with open("/proc/self/cgroup") as f:
            path = next((line.rstrip("\n").split(":", 2)[2] for line in f if line.startswith("0::")), None)
        if path is None:
            return None
        base = os.path.join("/sys/fs/cgroup", path.lstrip("/"))
        with open(os.path.join(base, "memory.max")) as f:
            limit = f.read().strip()
        if limit == "max":
            return None
        with open(os.path.join(base, "memory.current")) as f:
            return max(int(limit) - int(f.read().strip()), 0)
    except (OSError, ValueError, IndexError):
        return None


def _address_space_headroom() -> int | None:
    """RLIMIT_AS (ulimit -v) minus the current virtual size, when a limit is set."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft == resource.RLIM_INFINITY or soft < 0:
            return None
        with open("/proc/self/status") as f:
            size = next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:")), 0)
        return max(soft - size, 0)
    except (ImportError, OSError, ValueError):
        return None


def available_memory() -> int | None:
    """Bytes this process can still allocate: the smallest of MemAvailable (or os.sysconf), the cgroup
    headroom and the RLIMIT_AS headroom; None when none of them can be read."""
    known = [v for v in (_meminfo_available(), _cgroup_headroom(), _address_space_headroom()) if v is not None]
    return min(known) if known else None


def memory_limit() -> tuple[int | None, str]:
    """(limit in bytes or None for no limit, where it comes from, for messages)."""
    text = os.environ.get(ENV_VAR)
    if text is not None and text.strip():
        return parse_size(text), f"set by {ENV_VAR}={text.strip()}"
    available = available_memory()
    if available is None:
        return None, "the available memory is unknown"
    return int(available * MEMORY_FRACTION), f"half the memory available to this process; set {ENV_VAR} to change it"


def check(what: str, estimate: Cost, action: str = "to build") -> Cost:
    """Raise ResourceError when `estimate` needs more memory than the limit; else return it.

    `what` names the request (e.g. "a 1000000000 x 64 rbgp4 mask at sparsity 0.5").
    """
    limit, source = memory_limit()
    if limit is not None and estimate.bytes > limit:
        raise ResourceError(
            f"{what} needs about {format_bytes(estimate.bytes)} of memory {action} "
            f"(and {format_seconds(estimate.seconds)}), more than the {format_bytes(limit)} limit ({source})"
        )
    return estimate


def check_memory(nbytes: float, what: str) -> None:
    """Raise ResourceError when `what` (a model, a batch of inputs) needs more than the limit."""
    limit, source = memory_limit()
    if limit is not None and nbytes > limit:
        raise ResourceError(
            f"{what} needs about {format_bytes(nbytes)} of memory, more than the {format_bytes(limit)} limit ({source})"
        )
