"""rbgp: fast sparse neural networks from Ramanujan bipartite graph products.

`rbgp.graphs` is numpy-only; the torch parts are imported on first use, so `import rbgp.graphs`
never pulls in torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "sparsify": "rbgp.nn",
    "densify": "rbgp.nn",
    "from_pretrained": "rbgp.nn",
    "load_state": "rbgp.nn",
    "prune_oneshot": "rbgp.nn",
    "store_values_": "rbgp.nn",
    "RBGPLinear": "rbgp.nn",
    "RBGPConv2d": "rbgp.nn",
    "RBGPConv1d": "rbgp.nn",
    "SplitExperts": "rbgp.nn",
    "MaskedLinear": "rbgp.nn",
    "MaskedConv2d": "rbgp.nn",
    "RBGP4": "rbgp.patterns",
    "ramanujan": "rbgp.graphs",
    "product": "rbgp.graphs",
    "complete": "rbgp.graphs",
    "tune_cpu_allocator": "rbgp.allocator",
}


SUBMODULES = ("graphs", "patterns", "ops", "nn", "train", "bench", "tools", "precision")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in SUBMODULES:
        return importlib.import_module(f"rbgp.{name}")
    raise AttributeError(f"module 'rbgp' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, *SUBMODULES})


__all__ = ["__version__", *_LAZY]
