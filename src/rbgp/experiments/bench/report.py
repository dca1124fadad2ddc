"""Benchmark results as a markdown table and a speedup-vs-density plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def markdown_table(data: dict[str, Any]) -> str:
    """One row per case and phase: medians in ms and speedups over dense from the same run."""
    env = data["environment"]
    lines = [
        f"Command: `{data['command']}`  ",
        f"Machine: {env.get('device_name', env['processor'])}, {env['threads']} threads, torch {env['torch']}, "
        f"dtype {data['dtype']}, allocator {env.get('allocator', 'default')}, date {env['date']}",
        "",
    ]
    methods = [m for m in data["results"][0]["timings"]]
    header = (
        "| case | phase | "
        + " | ".join(f"{m} ms" for m in methods)
        + " | RBGP speedup vs dense | x ideal (1/density) | RBGP vs CSR | RBGP vs BSR |"
    )
    lines += [header, "|" + "---|" * (4 + len(methods) + 2)]
    for r in data["results"]:
        bsr = next(m for m in methods if m.startswith("bsr"))
        for phase in ("fwd", "fwd_bwd"):
            ms = " | ".join(f"{r['timings'][m][phase]['median_ms']:.2f}" for m in methods)
            lines.append(
                f"| {r['case']} | {phase} | {ms} | {r['speedup_' + phase]['rbgp']:.2f}x | "
                f"{r['speedup_per_ideal'][phase]:.2f} | {r['rbgp_vs_' + phase]['csr']:.2f}x | "
                f"{r['rbgp_vs_' + phase][bsr]:.2f}x |"
            )
    return "\n".join(lines) + "\n"


def plot_speedups(data: dict[str, Any], path: str | Path) -> None:
    """Speedup over dense against density for every method, with the ideal 1/density line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from rbgp.files import save_figure

    kinds = sorted({r["kind"] for r in data["results"]})
    fig, axes = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 4.5), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        rows = [r for r in data["results"] if r["kind"] == kind]
        methods = list(rows[0]["timings"])
        dens = np.array([r["density"] for r in rows])
        if len(set(dens)) > 1:  # speedup against density, with the ideal line
            grid = np.linspace(dens.min(), dens.max(), 50)
            ax.plot(grid, 1 / grid, "k--", lw=1, label="ideal 1/density")
            for m in methods:
                for phase, style in (("fwd", "o-"), ("fwd_bwd", "s:")):
                    ax.plot(dens, [r["speedup_" + phase][m] for r in rows], style, label=f"{m} {phase}")
            ax.set_xscale("log", base=2)
            ax.set_xlabel("density")
        else:  # one density: bars per case, the ideal 1/density as a line
            width = 0.8 / (2 * len(methods))
            for i, m in enumerate(methods):
                for j, phase in enumerate(("fwd", "fwd_bwd")):
                    x = np.arange(len(rows)) + (2 * i + j) * width - 0.4
                    ax.bar(
                        x,
                        [r["speedup_" + phase][m] for r in rows],
                        width,
                        label=f"{m} {phase}",
                        hatch="//" if phase == "fwd_bwd" else None,
                    )
            ax.axhline(1 / dens[0], color="k", ls="--", lw=1, label=f"ideal 1/density = {1 / dens[0]:.0f}")
            ax.set_xticks(np.arange(len(rows)))
            ax.set_xticklabels([r["case"].replace(" b", "\nb") for r in rows], fontsize=7)
        ax.set_yscale("log", base=2)
        ax.set_ylabel("speedup over dense")
        ax.set_title(f"{kind} ({data['environment'].get('device_name', data['environment']['processor'])})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, path)
    plt.close(fig)
