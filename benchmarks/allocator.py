"""Page faults and whole-model timings with glibc's default allocator settings and with
`rbgp.tune_cpu_allocator`, each in several fresh processes (the default's cost depends on each
process's heap history, so one process says little).

Every process builds the model dense and RBGP (global sparsity 0.9, distribution hw), times eval-mode
inference at batch 32 with the two alternating (medians of ROUNDS) and counts minor page faults per
forward.

    python benchmarks/allocator.py   # writes benchmarks/allocator.{json,md}
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from datetime import date
from pathlib import Path


from rbgp.experiments.bench.timing import machine
from rbgp.files import write_json, write_text

MODELS, MODES, PROCESSES, ROUNDS, BATCH = ("vgg19", "resnet18"), ("default", "tuned"), 4, 15, 32

CHILD = """
import json, resource, statistics, sys, time
import torch
import rbgp
name, mode, rounds, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if mode == "tuned":
    assert rbgp.tune_cpu_allocator()
from rbgp.experiments.bench.models import model_pair
dense, sparse, _ = model_pair(name, 0.9, "cpu", distribution="hw")
x = torch.randn(batch, 3, 32, 32)
models = {"dense": dense.eval(), "rbgp": sparse.eval()}
times, faults = {k: [] for k in models}, {k: 0 for k in models}
with torch.no_grad():
    for _ in range(2):
        for m in models.values():
            m(x)
    for _ in range(rounds):
        for k, m in models.items():
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            m(x)
            times[k].append((time.perf_counter() - t0) * 1e3)
            faults[k] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
print(json.dumps({k: {"median_ms": statistics.median(times[k]), "faults_per_forward": faults[k] / rounds}
                  for k in models}))
"""


def main() -> None:
    runs = []
    for name in MODELS:
        for i in range(PROCESSES):
            for mode in MODES:  # alternate the modes, so that a slow spell of the machine hits both
                out = subprocess.run([sys.executable, "-c", CHILD, name, mode, str(ROUNDS), str(BATCH)],
                                     capture_output=True, text=True, check=True)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                runs.append({"model": name, "mode": mode, "process": i, **r,
                             "speedup": r["dense"]["median_ms"] / r["rbgp"]["median_ms"]})
                print(f"{name} {mode} #{i}: dense {r['dense']['median_ms']:.1f} ms, RBGP {r['rbgp']['median_ms']:.1f} ms"
                      f" ({runs[-1]['speedup']:.2f}x), faults/forward {r['dense']['faults_per_forward']:.0f} / "
                      f"{r['rbgp']['faults_per_forward']:.0f}", flush=True)
    data = {"command": "python benchmarks/allocator.py", "date": date.today().isoformat(),
            "machine": machine(),
            "batch": BATCH, "sparsity": 0.9, "distribution": "hw", "rounds": ROUNDS, "runs": runs}
    here = Path(__file__).parent
    write_json(here / "allocator.json", data)
    lines = [f"# Allocator: page faults and inference time, default glibc settings vs `rbgp.tune_cpu_allocator()`",
             "", f"`{data['command']}`, {data['date']}, {data['machine']}; batch {BATCH}, global sparsity 0.9 (hw); "
             f"{PROCESSES} fresh processes per model and setting, each the median of {ROUNDS} rounds of dense and "
             f"RBGP inference timed alternately.", "",
             "| model | allocator | process | dense ms | RBGP ms | RBGP vs dense | faults/forward dense | RBGP |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['mode']} | {r['process']} | {r['dense']['median_ms']:.1f} | "
              f"{r['rbgp']['median_ms']:.1f} | {r['speedup']:.2f}x | {r['dense']['faults_per_forward']:.0f} | "
              f"{r['rbgp']['faults_per_forward']:.0f} |" for r in runs]
    lines += ["", "| model | allocator | RBGP vs dense, min / median / max over processes |", "|---|---|---|"]
    for name in MODELS:
        for mode in MODES:
            s = sorted(r["speedup"] for r in runs if r["model"] == name and r["mode"] == mode)
            lines.append(f"| {name} | {mode} | {s[0]:.2f}x / {statistics.median(s):.2f}x / {s[-1]:.2f}x |")
    write_text(here / "allocator.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
