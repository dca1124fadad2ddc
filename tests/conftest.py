"""Shared fixtures: a tiny Fashion-MNIST stand-in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def _write_idx(path: Path, magic: int, array: np.ndarray) -> None:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.fixture()
def fake_fashion(tmp_path, monkeypatch):
    """A tiny learnable Fashion-MNIST stand-in (class = bright quadrant), found via the env."""
    root = tmp_path / "fashion"
    root.mkdir()
    rng = np.random.default_rng(0)
    for split, n, (img, lab) in (("train", 256, ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")),
                                 ("test", 128, ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))):
        labels = rng.integers(0, 4, n)
        images = rng.integers(0, 60, (n, 28, 28))
        for i, c in enumerate(labels):
            r, q = divmod(int(c), 2)
            images[i, 14 * r : 14 * r + 14, 14 * q : 14 * q + 14] += 180
        _write_idx(root / img, 2051, images)
        _write_idx(root / lab, 2049, labels)
    monkeypatch.setenv("RBGP_FASHION_MNIST", str(root))
    return root
