"""Resident memory of six 4096x4096 RBGPLinear layers at 0.9 against the bytes of their values.

    python benchmarks/layer_memory.py        # writes benchmarks/layer_memory.json
"""

import datetime
import gc
import json
import os
import platform
from pathlib import Path

from rbgp.nn import RBGPLinear


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


RBGPLinear(256, 256, 0.9)  # imports and first-use allocations outside the measurement
gc.collect()
before = rss()
layers = [RBGPLinear(4096, 4096, 0.9, seed=i) for i in range(6)]
gc.collect()
grown = rss() - before
values = sum(layer.values.numel() * layer.values.element_size() for layer in layers)
result = {"command": "python benchmarks/layer_memory.py", "date": datetime.date.today().isoformat(),
          "machine": f"{platform.machine()}, {os.cpu_count()} cpus", "layers": "6 x RBGPLinear(4096, 4096, 0.9)",
          "values_bytes": values, "resident_growth_bytes": grown, "ratio": grown / values}
Path(__file__).with_name("layer_memory.json").write_text(json.dumps(result, indent=2) + "\n")
print(json.dumps(result, indent=2))
