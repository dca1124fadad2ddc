"""Channel-path convs on the native kernel against the gathered-channel grouped conv and dense, per layer.

An RBGP conv whose row groups read whole input channels runs, called without gradient on the CPU with
output rows of `NATIVE_MIN_WIDTH` pixels or more, on the native kernel's
wide tiles straight from its padded input (`rbgp.ops.native.grouped_conv`); otherwise on the gathered-
channel grouped conv of oneDNN (`rbgp.ops.channel_conv`). This times every channel-path conv of the
sparsified VGG19-bn and ResNet-18 (CIFAR, global 0.9, hw, batch 32, their own input shapes) on both
paths and the dense nn.Conv2d of the same shape, in turn in each round (a new order every round), each
call after a dense conv of its input as a model's other layers would run; and the native kernel with
256-bit vectors only ("native256": where the CPU has AVX-512VL its 8-row tiles use 512-bit ones,
`rbgp.ops.native.vector_bits`). Medians of ROUNDS rounds, in a plain process (glibc's allocator as a
user's script has it).

    python benchmarks/native_conv.py [--out STEM]   # writes benchmarks/native_conv.{json,md,png}
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from datetime import date
from pathlib import Path

import torch

from rbgp.experiments.bench.models import model_pair
from rbgp.experiments.bench.timing import machine
from rbgp.files import write_json, write_text
from rbgp.nn import RBGPConv2d
from rbgp.ops import conv, native

MODELS, BATCH, ROUNDS = ("vgg19", "resnet18"), 32, 25
SHIPPED = conv.NATIVE_MIN_WIDTH
PATHS = ("dense", "channel", "native", "native256")


def channel_convs(model: torch.nn.Module) -> dict[str, tuple[RBGPConv2d, torch.Size]]:
    """Every channel-path RBGP conv of `model` with its input shape at batch BATCH."""
    found, hooks = {}, []
    for name, m in model.named_modules():
        if isinstance(m, RBGPConv2d) and m.channels is not None and m.conv_args.merge is not None:
            hooks.append(m.register_forward_hook(lambda mod, a, o, name=name: found.update({name: (mod, a[0].shape)})))
    with torch.no_grad():
        model(torch.randn(BATCH, 3, 32, 32))
    for h in hooks:
        h.remove()
    return found


def dense_twin(layer: RBGPConv2d) -> torch.nn.Conv2d:
    return torch.nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                           layer.dilation, bias=layer.bias is not None)


def time_layer(layer: RBGPConv2d, x: torch.Tensor) -> dict[str, float]:
    dense, before = dense_twin(layer), torch.nn.Conv2d(x.shape[1], x.shape[1], 3, padding=1)
    calls = {"dense": lambda: dense(x), "channel": lambda: layer(x), "native": lambda: layer(x),
             "native256": lambda: layer(x)}
    times: dict[str, list[float]] = {p: [] for p in PATHS}
    bits = native.vector_bits()
    for i in range(ROUNDS + 2):
        for path in random.sample(PATHS, len(PATHS)):
            conv.NATIVE_MIN_WIDTH = 1 << 30 if path == "channel" else SHIPPED
            native.vector_bits(256 if path == "native256" else bits)
            before(x)
            start = time.perf_counter()
            calls[path]()
            if i >= 2:
                times[path].append((time.perf_counter() - start) * 1e3)
    conv.NATIVE_MIN_WIDTH = SHIPPED
    native.vector_bits(bits)
    return {p: statistics.median(t) for p, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "native_conv", help="output stem")
    out = p.parse_args().out
    random.seed(0)
    rows = []
    with torch.no_grad():
        for model_name in MODELS:
            _, sparse, _ = model_pair(model_name, 0.9, "cpu", distribution="hw")
            sparse.eval()
            for name, (layer, shape) in channel_convs(sparse).items():
                ms = time_layer(layer, torch.randn(shape))
                left, right = layer.conv_args.pad[:2]  # the output width, as conv._native_takes
                width = (shape[3] + left + right - layer.dilation[1] * (layer.kernel_size[1] - 1) - 1) // layer.stride[1] + 1
                runs_native = width >= SHIPPED
                rows.append({"model": model_name, "layer": name, "input": list(shape), "out_channels": layer.out_channels,
                             "kernel": list(layer.kernel_size), "stride": list(layer.stride), "native_runs": runs_native,
                             **{f"{p}_ms": ms[p] for p in PATHS}})
                print(rows[-1], flush=True)
    data = {"command": "python benchmarks/native_conv.py", "date": date.today().isoformat(), "machine": machine(),
            "batch": BATCH, "rounds": ROUNDS, "native_min_width": SHIPPED, "vector_bits": native.vector_bits(),
            "rows": rows}
    write_json(out.with_suffix(".json"), data)
    write_text(out.with_suffix(".md"), markdown(data))
    plot(data, out.with_suffix(".png"))


def markdown(data: dict) -> str:
    lines = ["# Channel-path convs: the native kernel against the gathered-channel grouped conv (0.9, hw)", "",
             f"`{data['command']}`, {data['date']}, {data['machine']}; batch {data['batch']}, a plain process (glibc "
             f"defaults), medians of {data['rounds']} rounds (the three in a new order each round, each call after a "
             "dense conv of its input). \"native\": the layer as shipped (the native kernel where its output rows "
             f"have {data['native_min_width']}+ pixels, else the channel path); "
             "\"channel\": the gathered-channel grouped conv; \"native256\": the native kernel with 256-bit vectors only "
             f"(as shipped: {data.get('vector_bits', 256)}-bit). Speedups over the dense conv of the same shape.", "",
             "| model | layer | input | out | stride | native runs | dense ms | channel ms (speedup) | native ms (speedup) "
             "| native256 ms (speedup) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        d = r["dense_ms"]
        lines.append(f"| {r['model']} | {r['layer']} | {tuple(r['input'])} | {r['out_channels']} | {tuple(r['stride'])} | "
                     f"{'yes' if r['native_runs'] else 'no'} | {d:.2f} | "
                     + " | ".join(_ms(r, p, d) for p in PATHS[1:]) + " |")
    for model in MODELS:
        total = {f"{p}_ms": sum(r.get(f"{p}_ms", 0.0) for r in data["rows"] if r["model"] == model) for p in PATHS}
        d = total["dense_ms"]
        lines.append(f"| {model} | all | | | | | {d:.2f} | " + " | ".join(_ms(total, p, d) for p in PATHS[1:]) + " |")
    return "\n".join(lines) + "\n"


def _ms(row: dict, path: str, dense: float) -> str:
    """`path`'s time in `row` and its speedup over `dense`, or "-" (runs from before the path was timed)."""
    ms = row.get(path + "_ms")
    return "-" if not ms else f"{ms:.2f} ({dense / ms:.2f}x)"


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in data["rows"] if r["native_runs"]]
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(rows)), 4))
    xs = range(len(rows))
    for shift, path_name in ((-0.2, "channel"), (0.2, "native")):
        ax.bar([x + shift for x in xs], [r["dense_ms"] / r[f"{path_name}_ms"] for r in rows], 0.4, label=path_name)
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xticks(list(xs), [f"{r['model']} {r['layer']}" for r in rows], rotation=70, fontsize=7)
    ax.set_ylabel("speedup over the dense conv")
    ax.set_title(f"Channel-path convs where the native kernel runs (batch {data['batch']}, 0.9)", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
