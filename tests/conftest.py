"""Shared fixtures: a tiny Fashion-MNIST stand-in, two gloo processes under torchrun."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
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


@pytest.fixture()
def torchrun_two(tmp_path):
    """run(worker_source) -> the CompletedProcess of 2 CPU processes under torchrun, the worker given
    tmp_path as its argument; asserts a zero exit with the output in the message."""

    def run(source: str) -> subprocess.CompletedProcess:
        script = tmp_path / "worker.py"
        script.write_text(source)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
               "127.0.0.1", "--master_port", str(port), str(script), str(tmp_path)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc

    return run
