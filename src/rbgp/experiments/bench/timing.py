"""Wall-clock timing with medians and quantiles, and the machine they were taken on."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch


def machine() -> str:
    """What a CPU timing ran on, for a benchmark's record: `cpu_name()`, threads and torch's version."""
    return f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def cpu_name() -> str:
    """The CPU's model name, family and model (the name alone is often just "AMD EPYC") and its widest
    vector extension."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
            if not line.strip():
                break  # the first processor is enough
    except OSError:
        pass
    flags = fields.get("flags", "").split()
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else platform.machine()
    name = fields.get("model name", platform.processor() or platform.machine())
    family = f" (family {fields['cpu family']}, model {fields['model']})" if "cpu family" in fields else ""
    return f"{name}{family}, {isa}"


def time_fn(fn: Callable[[], Any], repeats: int = 10, warmup: int = 2, device: str = "cpu") -> dict[str, float]:
    """Median and 20/80% quantiles of `fn`'s run time in milliseconds."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return _summary(times)


def _summary(times: list[float]) -> dict[str, float]:
    q20, med, q80 = np.quantile(times, [0.2, 0.5, 0.8])
    return {"median_ms": float(med), "q20_ms": float(q20), "q80_ms": float(q80), "repeats": len(times)}


def time_interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int = 10, warmup: int = 2
) -> dict[str, dict[str, float]]:
    """`time_fn`'s statistics for each of `fns` (CPU), run in turn within every repeat: a slow spell of
    the machine (another process, page faults, frequency) then hits all of them alike, so their ratios
    hold better than those of back-to-back runs."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: _summary(t) for name, t in times.items()}
