"""Time ramanujan(4096, 4096, 256) (density 1/16): build plus spectral verification, several seeds.

Run: .venv/bin/python benchmarks/ramanujan_timing.py  ->  benchmarks/ramanujan_timing.json
"""

from __future__ import annotations

import datetime
import json
import platform
import time
from pathlib import Path

from rbgp.graphs import ramanujan


def main(seeds: int = 5) -> dict:
    runs = []
    for seed in range(seeds):
        start = time.perf_counter()
        g = ramanujan(4096, 4096, 256, seed=seed)
        ok = g.is_ramanujan()
        runs.append({"seed": seed, "seconds": time.perf_counter() - start, "ramanujan": ok,
                     "sigma2": g.sigma2(), "bound": g.ramanujan_bound(), "method": g.name})
    secs = sorted(r["seconds"] for r in runs)
    data = {"command": "python benchmarks/ramanujan_timing.py", "date": datetime.date.today().isoformat(),
            "machine": platform.machine(), "python": platform.python_version(), "shape": [4096, 4096],
            "left_degree": 256, "median_s": secs[len(secs) // 2], "max_s": secs[-1], "runs": runs}
    out = Path(__file__).with_suffix(".json")
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(out)
    return data


if __name__ == "__main__":
    d = main()
    print(f"ramanujan(4096, 4096, 256): median {d['median_s']:.2f} s, max {d['max_s']:.2f} s over "
          f"{len(d['runs'])} seeds, all Ramanujan: {all(r['ramanujan'] for r in d['runs'])}")
