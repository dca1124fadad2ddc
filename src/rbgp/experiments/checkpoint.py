"""Training checkpoints: what a run saves after every epoch, and how it is read back exactly.

On disk a checkpoint is ``MAGIC`` (format and version), the SHA-256 of the payload, then the
payload: a ``torch.save`` archive of tensors and plain Python values only, read with
``torch.load(weights_only=True)`` (no pickle payload can run). The digest is checked before the
payload is parsed, so a flipped bit anywhere in the file is refused; weights or optimizer state
that are not finite are refused too, naming the tensor. Files are written atomically.
"""

from __future__ import annotations

import hashlib
import io
import math
import pickle
import random
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from rbgp.experiments.config import LEGACY_DEFAULTS, TrainConfig
from rbgp.files import atomic_write

__all__ = [
    "CHECKPOINT_NAME",
    "check_finite",
    "check_resumable",
    "checkpoint_state",
    "load_checkpoint",
    "restore",
    "save_checkpoint",
]

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = "rbgp-train-checkpoint"
CHECKPOINT_VERSION = 2
MAGIC = b"RBGPCKPT\x00\x02"  # format marker and version of the file layout
_DIGEST_BYTES = 32  # SHA-256
_ZIP_MAGIC = b"PK\x03\x04"  # version-1 checkpoints: a bare torch.save archive, no digest
# Fields that may change between a run and its resumption (they do not affect the numbers).
_RESUME_FREE = frozenset({"epochs", "data_dir"})


def _rng_state() -> dict[str, Any]:
    """torch / CUDA / numpy / python RNG states as tensors and plain values."""
    # numpy's stubs pick the legacy=False overload (a dict) for get_state(); it returns the legacy tuple
    kind, keys, pos, has_gauss, cached = cast("tuple[str, np.ndarray, int, int, float]", np.random.get_state())
    version, py_state, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {
            "version": int(version),
            "state": torch.tensor(py_state, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss_next"]))


def _plain_scheduler_state(state: dict[str, Any]) -> dict[str, Any]:
    """Counters (MultiStepLR milestones) -> dicts, which ``weights_only`` loading accepts."""
    return {k: dict(v) if isinstance(v, Counter) else v for k, v in state.items()}


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` atomically (temp file in the same folder, fsync, ``os.replace``), after
    checking that its weights and optimizer state are finite."""
    check_finite(state, Path(path))
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getbuffer()
    with atomic_write(path, "wb") as f:
        f.write(MAGIC)
        f.write(hashlib.sha256(payload).digest())
        f.write(payload)


def _tensors(obj: Any, name: str) -> Any:
    """(name, tensor) for every tensor in nested dicts / lists / tuples."""
    if isinstance(obj, torch.Tensor):
        yield name, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{name}.{k}" if name else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{name}[{i}]")


def check_finite(state: dict[str, Any], path: Path) -> None:
    """ValueError naming a field of the wrong type, or the first weight or optimizer tensor (or history
    value) that holds NaN or inf."""
    for key, kind, what in (("args", dict, "a mapping"), ("history", list, "a list"), ("epoch", int, "an integer")):
        if key in state and (not isinstance(state[key], kind) or isinstance(state[key], bool)):
            raise ValueError(f"{path}: checkpoint field {key!r} must be {what}, got {type(state[key]).__name__}")
    if not all(isinstance(row, dict) for row in state.get("history", [])):
        raise ValueError(f"{path}: checkpoint field 'history' must be a list of per-epoch mappings")
    for part in ("model", "optimizer"):
        for name, t in _tensors(state.get(part, {}), ""):
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                bad = int((~torch.isfinite(t)).sum())
                raise ValueError(
                    f"{path}: {part} tensor {name!r} holds {bad} non-finite value(s) (NaN or inf); "
                    f"refusing it (resume from an earlier copy or start over with --overwrite)"
                )
    for row in state.get("history", []):
        for key in ("train_loss", "test_loss"):
            value = row.get(key)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{path}: epoch {row.get('epoch')} has {key} = {value}; refusing it")


_CHECKPOINT_KEYS = ("format", "version", "epoch", "args", "model", "optimizer", "scheduler", "rng", "history")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and sanity-check a checkpoint (``weights_only=True``); ValueError if it is unusable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}" + (" (a directory)" if path.is_dir() else ""))
    data = path.read_bytes()
    if data.startswith(MAGIC):
        digest, payload = data[len(MAGIC) : len(MAGIC) + _DIGEST_BYTES], memoryview(data)[len(MAGIC) + _DIGEST_BYTES :]
        if hashlib.sha256(payload).digest() != digest:
            raise ValueError(
                f"{path}: checksum mismatch, the checkpoint is corrupt (changed after it was "
                f"written); delete it, or start over with --overwrite"
            )
        expected_version = CHECKPOINT_VERSION
    elif data.startswith(_ZIP_MAGIC):
        payload, expected_version = memoryview(data), 1
        warnings.warn(f"{path}: a version-1 checkpoint (no checksum): its contents cannot be verified", stacklevel=2)
    else:
        raise ValueError(
            f"{path}: not an rbgp training checkpoint (it does not start with the "
            f"checkpoint marker); corrupt, or another kind of file"
        )
    try:
        state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:  # torch's weights_only refusal: never retry without it
        raise ValueError(
            f"{path}: the checkpoint holds objects other than tensors and plain values; refused "
            f"(loading them could run code)"
        ) from None
    except Exception as exc:  # truncated zip, garbage bytes, ...
        reason = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise ValueError(
            f"{path}: corrupt or unreadable checkpoint ({type(exc).__name__}"
            f"{': ' + reason if reason else ''}); delete it to start over"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not an rbgp training checkpoint (no {CHECKPOINT_FORMAT!r} marker)")
    if state.get("version") != expected_version:
        raise ValueError(
            f"{path}: checkpoint version {state.get('version')!r}, this rbgp reads "
            f"{', '.join(map(str, range(1, CHECKPOINT_VERSION + 1)))}"
        )
    missing = [k for k in _CHECKPOINT_KEYS if k not in state]
    if missing:
        raise ValueError(f"{path}: checkpoint lacks {missing}")
    check_finite(state, path)
    return state


def check_resumable(saved: dict[str, Any], config: TrainConfig, path: Path) -> None:
    """Refuse to resume a checkpoint made with different settings (the numbers would differ)."""
    mine = config.to_dict()
    diffs = [
        f"{k}: checkpoint {saved.get(k, LEGACY_DEFAULTS.get(k))!r} vs now {mine[k]!r}"
        for k in mine
        if k not in _RESUME_FREE and saved.get(k, LEGACY_DEFAULTS.get(k)) != mine[k]
    ]
    if diffs:
        raise ValueError(f"{path}: checkpoint was made with different settings, cannot resume: " + "; ".join(diffs))
    if saved.get("epochs") != config.epochs and (
        config.schedule == "cosine" or config.method in ("magnitude", "autosparse")
    ):
        what = "the cosine schedule" if config.schedule == "cosine" else f"the {config.method} schedule"
        raise ValueError(
            f"{path}: {what} depends on epochs; checkpoint has epochs={saved.get('epochs')}, now {config.epochs}"
        )


def checkpoint_state(
    config: TrainConfig,
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    history: list[dict[str, float]],
) -> dict[str, Any]:
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "epoch": epoch,
        "args": config.to_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": _plain_scheduler_state(scheduler.state_dict()),
        "rng": _rng_state(),
        "history": [dict(r) for r in history],
        "threads": torch.get_num_threads(),  # results depend on it: see `warn_other_thread_count`
    }


def warn_other_thread_count(saved: dict[str, Any], path: Path) -> None:
    """Resuming with another CPU thread count is allowed but not bit-identical (reductions are split
    differently, so the last bits of the numbers move): say so."""
    threads = saved.get("threads")
    if isinstance(threads, int) and threads != torch.get_num_threads():
        warnings.warn(
            f"{path}: the checkpoint was written with {threads} CPU threads, this process runs "
            f"{torch.get_num_threads()}: the resumed run will differ from an uninterrupted one in the last "
            f"bits (torch.set_num_threads({threads}) or OMP_NUM_THREADS={threads} to match)",
            stacklevel=3,
        )


def restore(
    saved: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    path: Path,
) -> None:
    try:
        model.load_state_dict(saved["model"], strict=True)
        optimizer.load_state_dict(saved["optimizer"])
        sched_state = dict(saved["scheduler"])
        for k, v in scheduler.state_dict().items():
            if isinstance(v, Counter) and isinstance(sched_state.get(k), dict):
                sched_state[k] = Counter(sched_state[k])
        scheduler.load_state_dict(sched_state)
        _set_rng_state(saved["rng"])
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"{path}: checkpoint does not fit the model built from its settings ({mismatch_reason(exc)})"
        ) from exc


def mismatch_reason(exc: BaseException, limit: int = 300) -> str:
    """One line for a failed load: load_state_dict puts its reasons on the lines after "Error(s) in
    loading state_dict for ...:", so the lines are joined (and cut at `limit` characters)."""
    reason = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return f"{type(exc).__name__}: {reason[:limit]}{'...' if len(reason) > limit else ''}"
