"""Channel-path convs with and without the kept gather buffer, in a plain process (no allocator tuning).

A channel-path conv called without gradient gathers its input channels into a buffer the layer keeps
once they take `KEPT_GATHER_BYTES` or more (`rbgp.ops.channel_conv`). This times every channel-path conv
of the sparsified VGG19-bn (global 0.9, hw, batch 32, its own input shapes) with the threshold as
shipped ("kept") and switched off ("fresh": every gather a new tensor), the two alternating in each
round, with a dense conv of the layer's input run before each call as a model's other layers would
(it churns the allocator). Medians of ROUNDS rounds; minor page faults per call.

    python benchmarks/kept_gather.py   # writes benchmarks/kept_gather.{json,md}
"""

from __future__ import annotations

import resource
import statistics
import time
from datetime import date
from pathlib import Path

import torch

from rbgp.experiments.bench.models import model_pair
from rbgp.experiments.bench.timing import machine
from rbgp.files import write_json, write_text
from rbgp.nn import RBGPConv2d
from rbgp.ops import channel_conv

BATCH, ROUNDS = 32, 25
SHIPPED = channel_conv.KEPT_GATHER_BYTES


def input_shapes(model: torch.nn.Module) -> dict[str, torch.Size]:
    """The input shape of every channel-path RBGP conv of `model` at batch BATCH."""
    shapes, hooks = {}, []
    for name, m in model.named_modules():
        if isinstance(m, RBGPConv2d) and m.channels is not None and m.conv_args.merge is not None:
            hooks.append(m.register_forward_hook(lambda mod, a, o, name=name: shapes.update({name: a[0].shape})))
    with torch.no_grad():
        model(torch.randn(BATCH, 3, 32, 32))
    for h in hooks:
        h.remove()
    return shapes


def time_call(layer: torch.nn.Module, x: torch.Tensor, before: torch.nn.Module, keep: bool) -> tuple[float, int]:
    """Milliseconds and minor page faults of one call of `layer`, after one of `before`."""
    channel_conv.KEPT_GATHER_BYTES = SHIPPED if keep else 1 << 62
    before(x)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    layer(x)
    return (time.perf_counter() - start) * 1e3, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults


def main() -> None:
    _, sparse, _ = model_pair("vgg19", 0.9, "cpu", distribution="hw")
    sparse.eval()
    modules = dict(sparse.named_modules())
    rows = []
    with torch.no_grad():
        for name, shape in input_shapes(sparse).items():
            layer, x = modules[name], torch.randn(shape)
            before = torch.nn.Conv2d(shape[1], shape[1], 3, padding=1)
            runs: dict[bool, list[tuple[float, int]]] = {True: [], False: []}
            for i in range(ROUNDS + 3):
                for keep in (True, False) if i % 2 else (False, True):
                    result = time_call(layer, x, before, keep)
                    if i >= 3:
                        runs[keep].append(result)
            gathered = BATCH * layer.channels.numel() * shape[2] * shape[3] * 4
            rows.append({"layer": name, "input": list(shape), "gathered_mib": gathered / (1 << 20),
                         "kept": gathered >= SHIPPED,
                         **{f"{k}_ms": statistics.median(t for t, _ in runs[v]) for k, v in (("kept", True), ("fresh", False))},
                         **{f"{k}_faults": statistics.median(f for _, f in runs[v]) for k, v in (("kept", True), ("fresh", False))}})
            print(rows[-1], flush=True)
    channel_conv.KEPT_GATHER_BYTES = SHIPPED
    data = {"command": "python benchmarks/kept_gather.py", "date": date.today().isoformat(), "machine": machine(),
            "batch": BATCH, "rounds": ROUNDS, "kept_gather_bytes": SHIPPED, "rows": rows}
    here = Path(__file__).parent
    write_json(here / "kept_gather.json", data)
    lines = ["# Channel-path convs of VGG19-bn (0.9, hw) with and without the kept gather buffer", "",
             f"`{data['command']}`, {data['date']}, {data['machine']}; batch {BATCH}, a plain process (glibc "
             f"defaults), medians of {ROUNDS} alternating rounds, each call after a dense conv of its input. "
             f"\"as shipped\": gathers of {SHIPPED >> 20} MiB or more into the kept buffer; \"fresh\": every gather a "
             "new tensor.", "",
             "| layer | input | gathered MiB | kept as shipped | as shipped ms | fresh ms | faults per call, as shipped | fresh |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['layer']} | {tuple(r['input'])} | {r['gathered_mib']:.1f} | {'yes' if r['kept'] else 'no'} | "
                     f"{r['kept_ms']:.2f} | {r['fresh_ms']:.2f} | {r['kept_faults']:.0f} | {r['fresh_faults']:.0f} |")
    total = {k: sum(r[f"{k}_ms"] for r in rows) for k in ("kept", "fresh")}
    lines.append(f"| all | | | | {total['kept']:.2f} | {total['fresh']:.2f} | | |")
    write_text(here / "kept_gather.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
