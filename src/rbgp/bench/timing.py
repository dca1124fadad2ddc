"""Wall-clock timing with medians and quantiles, and atomic result files."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch


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
    q20, med, q80 = np.quantile(times, [0.2, 0.5, 0.8])
    return {"median_ms": float(med), "q20_ms": float(q20), "q80_ms": float(q80), "repeats": repeats}


def write_atomic(path: str | Path, text: str) -> None:
    """Write text to `path` via a temporary file and rename, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2) + "\n")
