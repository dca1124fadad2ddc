"""Pictures: a mask (full view and a zoomed tile)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rbgp.files import save_figure
from rbgp.patterns import SparseMask


def plot_mask(mask: SparseMask, path: str | Path, zoom: int = 64) -> None:
    """Full mask (downsampled by block density) and its top-left `zoom` x `zoom` corner, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = mask.array
    m, n = a.shape
    fm, fn = max(1, m // 512), max(1, n // 512)
    view = a[: m - m % fm, : n - n % fn].reshape(m // fm, fm, n // fn, fn).mean(axis=(1, 3))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [2, 1]})
    ax1.imshow(view, cmap="Greens", aspect="auto", interpolation="nearest", vmin=0, vmax=1, extent=(0, n, m, 0))
    ax1.set_title(f"{mask.kind} {m}x{n}, density {mask.density:.4f}" + (f" (pixel = {fm}x{fn})" if fm * fn > 1 else ""))
    ax1.set_xlabel("input (column)")
    ax1.set_ylabel("output (row)")
    z = a[: min(zoom, m), : min(zoom, n)]
    ax2.imshow(z, cmap="Greens", interpolation="nearest", vmin=0, vmax=1)
    ax2.set_title(f"top-left {z.shape[0]}x{z.shape[1]}")
    ax2.set_xticks(np.arange(-0.5, z.shape[1], 8), minor=True)
    ax2.set_yticks(np.arange(-0.5, z.shape[0], 8), minor=True)
    ax2.grid(which="minor", color="#ccc", linewidth=0.3)
    save_figure(fig, path)
    plt.close(fig)
