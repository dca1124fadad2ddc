"""Reusable tables and buffers of one sparse weight, owned by it (no module-level state).

The grouped torch path reads a few tables that depend on the batch size or grow with it (the row
index of a micro-block gather, the offsets of an embedding-bag gather). Building them costs a
measurable share of a forward (`benchmarks/linear_fixed_costs.md`), so each weight
keeps the last one of each kind it used. Tables are keyed by their inputs, the device and whether
inference mode is on (a table made under inference_mode must not reach autograd). Nothing is kept
while torch.compile traces: the graph builds its own.

Large temporaries of a forward without gradient (a conv's gathered input channels, or its zero-padded
input for the native kernel) are kept too
(`buffer`): a fresh block of tens of megabytes is mapped and faulted in on every call by glibc's
default allocator, which cost sparse CNNs a fifth of their inference time in a plain process
(`docs/benchmarks.md`, whole CNNs). A buffer serves one call at a time (`lock`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")

MAX_BYTES = 1 << 20
"""Tables larger than this are rebuilt on every call rather than kept."""


class Workspace:
    """One weight's kept tables: the last value per name, rebuilt when its key changes; and `plan`, the
    native kernel's prepared call for this weight (`rbgp.ops.native`, which checks it on every use)."""

    __slots__ = ("_slots", "plan", "lock")

    def __init__(self) -> None:
        self._slots: dict[str, tuple[tuple, object]] = {}
        self.plan: object | None = None
        self.lock = threading.Lock()  # held while a call writes and reads a `buffer`

    def get(self, name: str, key: tuple, build: Callable[[], T], nbytes: Callable[[T], int] = lambda v: 0) -> T:
        """build(), kept under `name` while `key` stays the same and it takes at most MAX_BYTES."""
        if torch.compiler.is_compiling():
            return build()
        key = (*key, torch.is_inference_mode_enabled())
        hit = self._slots.get(name)
        if hit is not None and hit[0] == key:
            return hit[1]  # type: ignore[return-value]
        value = build()
        if nbytes(value) <= MAX_BYTES:
            self._slots[name] = (key, value)
        else:
            self._slots.pop(name, None)
        return value

    def buffer(self, name: str, shape: tuple[int, ...], like: torch.Tensor, zeroed: bool = False) -> torch.Tensor:
        """An uninitialised tensor (zeros when made, where `zeroed`: for a caller that only ever writes the
        same part of it) of `shape` with `like`'s dtype and device, kept under `name` (any size) for the
        next call with the same shape: a temporary that the caller overwrites, reads within the call while
        holding `lock`, and that nothing keeps (no autograd graph: calls without gradient)."""
        key = (shape, like.dtype, like.device, torch.is_inference_mode_enabled())
        hit = self._slots.get(name)
        if hit is not None and hit[0] == key:
            return hit[1]  # type: ignore[return-value]
        self._slots.pop(name, None)  # the old one goes before the new one is made
        value = (torch.zeros if zeroed else torch.empty)(shape, dtype=like.dtype, device=like.device)
        self._slots[name] = (key, value)
        return value

    def __deepcopy__(self, memo) -> Workspace:
        return Workspace()  # tables are rebuilt on demand; a copy shares nothing

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self._slots = {}
        self.plan = None
        self.lock = threading.Lock()


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()
