"""Inference from a compressed file under a memory budget, with the batch size chosen for throughput.

The file's tensors stay compressed in memory. When the decoded weights fit in the budget beside the
activations, they are decoded once ("resident"); otherwise each layer's weights are decoded just
before it runs and dropped right after ("streamed"), so only one layer's weights are ever decoded.
The batch size is then the one, among powers of two up to the largest that fits, with the highest
measured throughput whose per-batch latency meets the latency budget (as in Vooturi et al.,
arXiv 1711.00244: under a memory limit, a variable batch size beats a fixed one).

Memory is estimated before running (compressed bytes + decoded weights + twice the activations, the
latter from one probe forward at batch 1); the budget applies to that estimate. While running, the
process's peak resident set is measured too (Linux `VmHWM`, reset through `/proc/self/clear_refs`):
it includes the Python and torch runtime, so it is reported beside the resident set before the file
was read.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rbgp.compress.format import decode_entry, fill, read
from rbgp.resources import parse_size

__all__ = ["BudgetPlan", "CompressedRunner", "parse_bytes", "peak_rss", "process_memory", "run_all"]


def parse_bytes(text: str) -> int:
    """'64MB', '512k', '1.5GB' or a plain number of bytes -> bytes (`rbgp.resources.parse_size`'s
    syntax, without 'unlimited'; ValueError naming the text)."""
    try:
        value = parse_size(str(text))
    except ValueError:
        raise ValueError(
            f"memory size {text!r}: expected a positive number with an optional unit (B, KB, MB, GB)"
        ) from None
    if value is None:
        raise ValueError(f"memory size {text!r} must be a positive size below 8 EB")
    return value


@dataclass(frozen=True)
class BudgetPlan:
    mode: str  # "resident" or "streamed"
    batch_size: int
    estimate_bytes: int
    candidates: dict[str, dict[str, float]]  # "mode batch" -> {"throughput", "latency_s", "estimate_bytes"}


class CompressedRunner:
    """A model whose weights come from a compressed file, decoded all at once or layer by layer."""

    def __init__(self, path: str | Path, model: nn.Module) -> None:
        self.path = Path(path)
        self.header, self.tensors = read(path)
        self.model = model.eval()
        self.entries = self.header["entries"]
        state = model.state_dict()
        self.compressed_bytes = sum(t.numel() * t.element_size() for t in self.tensors.values())
        self.decoded_bytes = sum(t.numel() * t.element_size() for t in state.values())
        self._params = {name: dict(m.named_parameters(recurse=False)) for name, m in model.named_modules()}
        self._params = {name: ps for name, ps in self._params.items() if ps}
        self.largest_layer_bytes = max(
            (sum(p.numel() * p.element_size() for p in ps.values()) for ps in self._params.values()), default=0
        )
        self.mode = "resident"
        self._hooks: list[Any] = []
        self._per_sample: dict[tuple[int, ...], int] = {}
        self._decode_all()

    # -- decoding ---------------------------------------------------------------------------------

    def _decode(self, key: str, like: torch.Tensor) -> torch.Tensor:
        target = torch.empty(self.entries[key]["shape"], dtype=like.dtype)
        return decode_entry(key, self.entries[key], self.tensors, target)

    def _decode_all(self) -> None:
        fill(self.path, self.header, self.tensors, self.model)  # every entry checked, errors name the tensor

    def _fill(self, name: str) -> None:
        for pname, p in self._params[name].items():
            key = f"{name}.{pname}" if name else pname
            p.data = self._decode(key, p)

    def _drop(self, name: str) -> None:
        for p in self._params[name].values():
            p.data = torch.empty(0, dtype=p.dtype)

    def set_mode(self, mode: str) -> None:
        """ "resident": every weight decoded once; "streamed": each layer's weights decoded per call."""
        if mode not in ("resident", "streamed"):
            raise ValueError(f"mode must be 'resident' or 'streamed', got {mode!r}")
        if mode == self.mode:
            return
        for h in self._hooks:
            h.remove()
        self._hooks = []
        if mode == "resident":
            for name in self._params:
                self._fill(name)
        else:
            modules = dict(self.model.named_modules())
            for name in self._params:
                self._drop(name)
                self._hooks.append(modules[name].register_forward_pre_hook(lambda m, a, n=name: self._fill(n)))
                self._hooks.append(modules[name].register_forward_hook(lambda m, a, o, n=name: self._drop(n)))
        self.mode = mode

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    # -- planning ---------------------------------------------------------------------------------

    @torch.no_grad()
    def activation_bytes_per_sample(self, sample_shape: tuple[int, ...]) -> int:
        """Peak bytes of one layer's input plus output per sample (a probe forward at batch 1, once per shape)."""
        if sample_shape in self._per_sample:
            return self._per_sample[sample_shape]
        peak = 0

        def record(module: nn.Module, inputs: tuple, output: Any) -> None:
            nonlocal peak
            size = sum(t.numel() * t.element_size() for t in [*inputs, output] if isinstance(t, torch.Tensor))
            peak = max(peak, size)

        handles = [m.register_forward_hook(record) for m in self.model.modules() if not list(m.children())]
        try:
            self(torch.zeros(1, *sample_shape))
        finally:
            for h in handles:
                h.remove()
        self._per_sample[sample_shape] = peak
        return peak

    def estimate(self, mode: str, batch: int, per_sample: int) -> int:
        weights = self.decoded_bytes if mode == "resident" else self.largest_layer_bytes
        return self.compressed_bytes + weights + 2 * batch * per_sample  # x2: the allocator's slack

    def candidates(
        self,
        x: torch.Tensor,
        memory_budget: int,
        latency_budget_s: float | None = None,
        max_batch: int = 1024,
        reps: int = 3,
    ) -> dict[tuple[str, int], dict[str, float]]:
        """Measured throughput and latency of every (mode, power-of-two batch) that fits the memory
        budget, stopping a mode's doubling at the first batch over the latency budget."""
        per_sample = self.activation_bytes_per_sample(tuple(x.shape[1:]))
        found: dict[tuple[str, int], dict[str, float]] = {}
        for mode in ("resident", "streamed"):
            self.set_mode(mode)
            batch = 1
            while batch <= min(max_batch, x.shape[0]) and self.estimate(mode, batch, per_sample) <= memory_budget:
                latency = measure_latency(self, x[:batch], reps)
                found[mode, batch] = {
                    "throughput": batch / latency,
                    "latency_s": latency,
                    "estimate_bytes": self.estimate(mode, batch, per_sample),
                }
                if latency_budget_s is not None and latency > latency_budget_s:
                    break
                batch *= 2
        if not found:
            need = min(self.estimate(m, 1, per_sample) for m in ("resident", "streamed"))
            raise ValueError(
                f"memory budget {memory_budget:,} B is below the {need:,} B that batch 1 needs "
                f"(compressed weights, one decoded layer, activations)"
            )
        return found

    def plan(
        self,
        x: torch.Tensor,
        memory_budget: int,
        latency_budget_s: float | None = None,
        max_batch: int = 1024,
        reps: int = 3,
    ) -> BudgetPlan:
        """The fastest measured (mode, batch) within both budgets; the runner is left in that mode."""
        found = self.candidates(x, memory_budget, latency_budget_s, max_batch, reps)
        ok = {k: c for k, c in found.items() if latency_budget_s is None or c["latency_s"] <= latency_budget_s}
        if not ok:
            fastest = min(c["latency_s"] for c in found.values())
            assert latency_budget_s is not None  # without one, nothing is left out (none found: min() raised)
            raise ValueError(
                f"latency budget {latency_budget_s * 1e3:.1f} ms is below the fastest batch's {fastest * 1e3:.1f} ms"
            )
        mode, batch = max(ok, key=lambda k: ok[k]["throughput"])
        self.set_mode(mode)
        return BudgetPlan(
            mode, batch, int(ok[mode, batch]["estimate_bytes"]), {f"{m} {b}": c for (m, b), c in found.items()}
        )

    def fixed_mode(self, x: torch.Tensor, memory_budget: int, batch: int) -> str | None:
        """The mode a fixed batch size runs in under the budget (resident if it fits), or None."""
        per_sample = self.activation_bytes_per_sample(tuple(x.shape[1:]))
        return next((m for m in ("resident", "streamed") if self.estimate(m, batch, per_sample) <= memory_budget), None)


@torch.no_grad()
def measure_latency(run: CompressedRunner, xb: torch.Tensor, reps: int = 3) -> float:
    """Median seconds of one call on `xb` (after one warm-up call)."""
    run(xb)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        run(xb)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


@contextmanager
def peak_rss() -> Iterator[dict[str, int]]:
    """The process's peak resident set over the block (bytes; -1 where Linux's /proc is unavailable)."""
    result = {"peak_rss_bytes": -1}
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident set
        ok = True
    except OSError:
        ok = False
    yield result
    if ok:
        result["peak_rss_bytes"] = process_memory("VmHWM")


def process_memory(field: str) -> int:
    """A memory figure of this process from /proc/self/status ("VmRSS", "VmHWM"), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no {field} in /proc/self/status")


def run_all(run: CompressedRunner, x: torch.Tensor, batch: int) -> dict[str, float]:
    """Throughput (samples/s) over all of `x` in batches of `batch`, and the measured peak RSS growth."""
    run(x[:batch])  # warm-up
    with peak_rss() as mem:
        t0 = time.perf_counter()
        for i in range(0, x.shape[0], batch):
            run(x[i : i + batch])
        elapsed = time.perf_counter() - t0
    return {"throughput": x.shape[0] / elapsed, "seconds": elapsed, "peak_rss_bytes": mem["peak_rss_bytes"]}
