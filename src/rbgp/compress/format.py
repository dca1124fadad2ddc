"""The compressed model file: safetensors (no pickle) with a versioned header and a payload checksum.

`save(model, path, quantize=None, huffman=False)` writes the model's state; `load(path, model)` fills a
model built and sparsified the same way (the "state_dict plus a model factory" form: the structure of
an RBGP layer is a pure function of its shape and the `sparsify` arguments, so the file stores only
its non-zero values, its bias and its 8-byte structure id, plus the index lists of a structure fitted
with init="magnitude"). Masked baseline layers are stored as CSR (int32 column indices and row
pointers) with a checksum of their mask; every other tensor is stored dense.

Optionally the weight values (RBGP values, CSR values, dense weights of 2 or more dims) are quantised
per row (`rbgp.compress.quantize`) and their symbols Huffman-coded (`rbgp.compress.huffman`); 1-D
tensors (biases, norms) stay as they are. Without quantisation a save/load round trip is bit-exact.

A file is refused with a ValueError naming the problem, before any allocation of the sizes it claims,
when it is truncated, bit-flipped (checksum), of another version or format, or does not match the model.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from rbgp.compress.huffman import CHUNK, HuffmanStream, decode, encode
from rbgp.compress.quantize import QUANTIZERS, dequantize
from rbgp.compress.quantize import quantize as quantize_values
from rbgp.files import atomic_write
from rbgp.nn import MaskedConv2d, MaskedLinear, RBGPConv2d, RBGPLinear, store_values_
from rbgp.nn.stored import store_dense_

__all__ = ["FORMAT", "VERSION", "CompressedFileError", "load", "read", "save"]

FORMAT = "rbgp-compressed"
VERSION = 1
MAX_HEADER_BYTES = 16 << 20


class CompressedFileError(ValueError):
    """A compressed model file that cannot be used (corrupt, another version, another model)."""


# ----------------------------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------------------------


def save(
    model: nn.Module,
    path: str | Path,
    *,
    quantize: str | None = None,
    huffman: bool = False,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write `model`'s state to `path` atomically; returns the header (entries and sizes). `extra`
    (JSON-able, e.g. the training config that rebuilds the model) is kept in the checksummed header."""
    if quantize is not None and quantize not in QUANTIZERS:
        raise ValueError(f"unknown quantize {quantize!r}; valid: None, {', '.join(QUANTIZERS)}")
    if huffman and quantize is None:
        raise ValueError("huffman=True codes quantised symbols: give quantize='int8', 'int4' or 'kmeans16' too")
    state = model.state_dict()
    masked = {f"{name}.weight": m for name, m in _named(model, (MaskedLinear, MaskedConv2d))}
    rbgp_values = {f"{name}.values" for name, _ in _named(model, (RBGPLinear, RBGPConv2d))}
    tensors: dict[str, torch.Tensor] = {}
    entries: dict[str, dict[str, Any]] = {}
    for key, t in state.items():
        t = t.detach().cpu()
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"tensor {key!r} holds inf or NaN: a compressed file keeps finite values only")
        entry: dict[str, Any] = {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}
        if key in masked:
            _put_csr(key, t, masked[key].mask.cpu(), quantize, huffman, tensors, entry)
        elif key.endswith(".mask") and key[: -len("mask")] + "weight" in masked:
            entry.update(kind="mask", sha256=_digest(t))
        elif quantize is not None and t.is_floating_point() and t.dim() >= 2:
            # per-row scales: an RBGP layer's (groups, rows, non-zeros) values have a row per output row
            rows = t.shape[:-1].numel() if key in rbgp_values else t.shape[0]
            entry.update(kind="dense", rows=int(rows))
            _put_values(key, t.reshape(rows, -1), quantize, huffman, tensors, entry)
        else:
            entry["kind"] = "raw"
            tensors[key] = t.contiguous().clone()  # a copy: tied weights must not share memory in the file
        entries[key] = entry
    header = {
        "format": FORMAT,
        "version": VERSION,
        "quantize": quantize,
        "huffman": huffman,
        "entries": entries,
        "extra": extra or {},
    }
    header["checksum"] = _checksum(header, tensors)
    from safetensors.torch import save as st_save

    payload = st_save(tensors, metadata={"rbgp": json.dumps(header, sort_keys=True)})
    with atomic_write(path, "wb") as f:
        f.write(payload)
    header["file_bytes"] = len(payload)
    return header


_M = TypeVar("_M", bound=nn.Module)


def _named(model: nn.Module, types: tuple[type[_M], ...]) -> list[tuple[str, _M]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, types)]


def _put_csr(
    key: str,
    weight: torch.Tensor,
    mask: torch.Tensor,
    quantize: str | None,
    huffman: bool,
    tensors: dict[str, torch.Tensor],
    entry: dict[str, Any],
) -> None:
    mat = (weight * mask).reshape(weight.shape[0], -1)
    nz = mask.reshape(mat.shape).bool()
    counts = nz.sum(dim=1)
    entry.update(kind="csr", mask_sha256=_digest(mask), nnz=int(counts.sum()))
    tensors[f"{key}::crow"] = torch.cat([counts.new_zeros(1), counts.cumsum(0)]).to(torch.int32)
    tensors[f"{key}::col"] = nz.nonzero()[:, 1].to(torch.int32)
    values = mat[nz]
    rows = torch.repeat_interleave(torch.arange(mat.shape[0]), counts)
    _put_values(key, values, quantize, huffman, tensors, entry, rows=rows.numpy(), n_rows=mat.shape[0])


def _put_values(
    key: str,
    values: torch.Tensor,
    quantize: str | None,
    huffman: bool,
    tensors: dict[str, torch.Tensor],
    entry: dict[str, Any],
    rows: np.ndarray | None = None,
    n_rows: int | None = None,
) -> None:
    """Store `values` ((rows, cols) or flat with `rows` ids) raw, quantised, or quantised and Huffman-coded."""
    if quantize is None:
        tensors[f"{key}::val"] = values.contiguous()
        entry["values"] = "raw"
        return
    v = values.float().numpy()
    if rows is None:
        n_rows = v.shape[0]
        rows = np.repeat(np.arange(n_rows), v.shape[1] if v.ndim > 1 else 1)
    assert n_rows is not None  # given with `rows`
    q = quantize_values(v.reshape(-1), rows, n_rows, quantize)
    tensors[f"{key}::table"] = torch.from_numpy(q.table.copy())
    entry.update(values=quantize, count=int(q.symbols.size), max_error=q.max_error)
    if huffman:
        stream = encode(q.symbols, q.alphabet)
        tensors[f"{key}::huff"] = torch.frombuffer(bytearray(stream.data or b"\0"), dtype=torch.uint8)
        tensors[f"{key}::offsets"] = torch.from_numpy(stream.offsets.copy())
        tensors[f"{key}::lengths"] = torch.from_numpy(stream.lengths.copy())
        entry["huffman_bytes"] = len(stream.data)
    else:
        tensors[f"{key}::sym"] = torch.from_numpy(_pack(q.symbols, q.alphabet))


def _pack(symbols: np.ndarray, alphabet: int) -> np.ndarray:
    """Bytes of the symbols: one per byte, or two per byte for 16-symbol alphabets."""
    if alphabet > 16:
        return symbols.astype(np.uint8)
    s = symbols.astype(np.uint8)
    if s.size % 2:
        s = np.append(s, np.uint8(0))
    return (s[0::2] << 4 | s[1::2]).astype(np.uint8)


def _unpack(packed: np.ndarray, alphabet: int, count: int) -> np.ndarray:
    if alphabet > 16:
        return packed[:count]
    out = np.empty(packed.size * 2, dtype=np.uint8)
    out[0::2], out[1::2] = packed >> 4, packed & 15
    return out[:count]


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def _checksum(header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the header (without the checksum) and every tensor's name, dtype, shape and bytes."""
    h = hashlib.sha256(json.dumps({k: v for k, v in header.items() if k != "checksum"}, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def read(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The verified header and tensors of a compressed file (CompressedFileError if unusable)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no compressed model file at {path}")
    data = path.read_bytes()
    if len(data) < 8:
        raise CompressedFileError(f"{path}: {len(data)} bytes is too short for a compressed model file")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER_BYTES or 8 + n > len(data):
        raise CompressedFileError(
            f"{path}: header claims {n} bytes, the file has {len(data)} (at most "
            f"{MAX_HEADER_BYTES} allowed): truncated or not a compressed model file"
        )
    try:
        meta = json.loads(data[8 : 8 + n].decode("utf-8")).get("__metadata__") or {}
        header = json.loads(meta["rbgp"])
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError, RecursionError) as err:
        raise CompressedFileError(
            f"{path}: not an rbgp compressed model file (no {FORMAT!r} header: {type(err).__name__})"
        ) from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CompressedFileError(
            f"{path}: not an rbgp compressed model file (format {header.get('format')!r} where {FORMAT!r} was expected)"
            if isinstance(header, dict)
            else f"{path}: not an rbgp compressed model file"
        )
    if header.get("version") != VERSION:
        raise CompressedFileError(
            f"{path}: file format version {header.get('version')!r}, this rbgp reads version {VERSION}"
        )
    from safetensors.torch import load as st_load

    try:
        tensors = st_load(data)
    except Exception as err:  # safetensors raises its own error types on bad offsets or sizes
        raise CompressedFileError(
            f"{path}: corrupt tensor data ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from None
    if _checksum(header, tensors) != header.get("checksum"):
        raise CompressedFileError(f"{path}: checksum mismatch: the file is corrupt (changed after it was written)")
    return header, tensors


def load(path: str | Path, model: nn.Module, *, int8_values: bool = False) -> nn.Module:
    """Fill `model` (built and sparsified like the saved one) from `path`; returns it. With
    `int8_values`, every RBGPLinear whose values the file holds as int8 keeps them as int8 with their
    per-row scales (`rbgp.store_values_`), and every nn.Linear kept dense whose weight it holds as int8
    becomes an int8 `rbgp.nn.StoredLinear`, so a decode step reads a quarter of the fp32 bytes; the
    weights are the file's (rescaled to within an ulp)."""
    header, tensors = read(path)
    return fill(path, header, tensors, model, int8_values=int8_values)


def fill(
    path: str | Path,
    header: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    model: nn.Module,
    *,
    int8_values: bool = False,
) -> nn.Module:
    """`load` on a file already `read`: every entry decoded and checked before the model changes
    (CompressedFileError naming the file and tensor otherwise)."""
    state = model.state_dict()
    entries = header.get("entries")
    if not isinstance(entries, dict) or not all(isinstance(e, dict) for e in entries.values()):
        raise CompressedFileError(f"{path}: 'entries' must map tensor names to entries, got {type(entries).__name__}")
    for name, layer in _named(model, (RBGPLinear, RBGPConv2d)):  # a structure fitted when it was converted:
        for index in ("row_index", "col_index"):  # a seed-built layer adopts it on load (its id checked)
            key = f"{name}.{index}" if name else index
            if key in entries and key not in state:
                state[key] = getattr(layer, index)
    missing, extra = sorted(set(state) - set(entries)), sorted(set(entries) - set(state))
    if missing or extra:
        raise CompressedFileError(
            f"{path} does not match the model: missing {missing[:5]}, unexpected {extra[:5]}"
            f" (build and sparsify the model as the saved one was)"
        )
    new_state = {}
    for key, target in state.items():
        try:
            new_state[key] = decode_entry(key, entries[key], tensors, target)
        except (KeyError, TypeError, ValueError) as err:
            raise CompressedFileError(f"{path}: tensor {key!r}: {err}") from None
    for name, _ in _named(model, (MaskedLinear, MaskedConv2d)):
        prefix = f"{name}." if name else ""
        off_mask = new_state[prefix + "weight"][~new_state[prefix + "mask"].bool()]
        if bool((off_mask != 0).any()):
            raise CompressedFileError(f"{path}: tensor {prefix + 'weight'!r} has entries off its saved mask")
    try:
        model.load_state_dict(new_state, strict=True)
    except (RuntimeError, ValueError) as err:
        detail = " ".join(str(err).split()).removeprefix("Error(s) in loading state_dict for ")
        raise CompressedFileError(f"{path} does not match the model: {detail[:600]}") from None
    if int8_values:
        for name, layer in _named(model, (RBGPLinear,)):
            if entries[f"{name}.values" if name else "values"].get("values") == "int8":
                store_values_(layer, torch.int8)
        dense = {name for name, m in model.named_modules() if type(m) is nn.Linear and name}
        store_dense_(model, torch.int8, {n for n in dense if entries.get(f"{n}.weight", {}).get("values") == "int8"})
    return model


def decode_entry(
    key: str, entry: dict[str, Any], tensors: dict[str, torch.Tensor], target: torch.Tensor
) -> torch.Tensor:
    """The tensor for `key`, checked: shape and dtype of the model's, finite, its indices and symbols
    in range."""
    t = _decode(key, entry, tensors, target)
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise ValueError("holds inf or NaN (a file written by rbgp never does)")
    return t


def _decode(key: str, entry: dict[str, Any], tensors: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    if list(entry["shape"]) != list(target.shape) or entry["dtype"] != str(target.dtype).removeprefix("torch."):
        raise ValueError(
            f"the file has {entry['dtype']} {entry['shape']}, the model {target.dtype} {list(target.shape)}"
        )
    kind = entry["kind"]
    if kind == "raw":
        t = tensors[key]
        if t.shape != target.shape or t.dtype != target.dtype:
            raise ValueError(f"stored as {t.dtype} {list(t.shape)}")
        return t
    if kind == "mask":
        if _digest(target) != entry["sha256"]:
            raise ValueError("the model's mask differs from the saved one (another seed or pattern?)")
        return target
    rows = int(entry.get("rows", target.shape[0])) if target.dim() else 1
    if rows < 1 or target.numel() % rows:
        raise ValueError(f"{rows} rows do not divide {target.numel()} values")
    cols = target.numel() // rows
    if kind == "dense":
        values = _values(key, entry, tensors, rows * cols, np.repeat(np.arange(rows), cols))
        return values.reshape(target.shape).to(target.dtype)
    if kind == "csr":
        return _decode_csr(key, entry, tensors, target, rows, cols)
    raise ValueError(f"unknown entry kind {kind!r}")


def _decode_csr(
    key: str, entry: dict[str, Any], tensors: dict[str, torch.Tensor], target: torch.Tensor, rows: int, cols: int
) -> torch.Tensor:
    crow, col = tensors[f"{key}::crow"].long(), tensors[f"{key}::col"].long()
    nnz = int(entry["nnz"])
    if (
        crow.shape != (rows + 1,)
        or int(crow[0]) != 0
        or int(crow[-1]) != nnz
        or (crow.diff() < 0).any()
        or col.shape != (nnz,)
        or nnz > rows * cols
        or (nnz and (col.min() < 0 or col.max() >= cols))
    ):
        raise ValueError("inconsistent CSR indices")
    row_ids = torch.repeat_interleave(torch.arange(rows), crow.diff()).numpy()
    same_row = torch.from_numpy(row_ids[1:] == row_ids[:-1])
    if nnz > 1 and bool((col.diff()[same_row] <= 0).any()):
        raise ValueError("CSR columns must increase within each row (an entry is stored twice or out of order)")
    values = _values(key, entry, tensors, nnz, row_ids)
    dense = torch.zeros(rows, cols, dtype=target.dtype)
    dense[torch.from_numpy(row_ids), col] = values.to(target.dtype)
    return dense.reshape(target.shape)


def _values(
    key: str, entry: dict[str, Any], tensors: dict[str, torch.Tensor], count: int, row_ids: np.ndarray
) -> torch.Tensor:
    """`count` values of an entry, decoded from raw, quantised or Huffman-coded storage."""
    kind = entry["values"] if "values" in entry else "raw"
    if kind == "raw":
        v = tensors[f"{key}::val"].reshape(-1)
        if v.numel() != count:
            raise ValueError(f"{v.numel()} values stored where {count} are needed")
        return v
    if kind not in QUANTIZERS or int(entry["count"]) != count:
        raise ValueError(f"bad quantised values ({kind!r}, {entry.get('count')} of {count})")
    alphabet = QUANTIZERS[kind][1]
    table = tensors[f"{key}::table"].numpy()
    expected_table = 16 if kind == "kmeans16" else (int(row_ids.max()) + 1 if row_ids.size else 0)
    if table.shape[0] < expected_table:
        raise ValueError(f"{table.shape[0]} scales or centroids where {expected_table} are needed")
    if f"{key}::huff" in tensors:
        offsets = tensors[f"{key}::offsets"].numpy()
        if offsets.size != -(-count // CHUNK):
            raise ValueError("Huffman chunk offsets do not fit the value count")
        data = tensors[f"{key}::huff"].numpy().tobytes()[: int(entry["huffman_bytes"])]
        symbols = decode(HuffmanStream(tensors[f"{key}::lengths"].numpy(), data, count, offsets))
    else:
        packed = tensors[f"{key}::sym"].numpy()
        if packed.size < (count if alphabet > 16 else -(-count // 2)):
            raise ValueError("fewer quantised symbols than values")
        symbols = _unpack(packed, alphabet, count)
    if not np.isfinite(table).all():
        raise ValueError("a scale or centroid is inf or NaN")
    qmax = QUANTIZERS[kind][0]
    low, high = (0, 15) if kind == "kmeans16" else (alphabet // 2 - qmax, alphabet // 2 + qmax)
    if symbols.size and (int(symbols.min()) < low or int(symbols.max()) > high):
        raise ValueError(f"a quantised symbol outside {low}..{high}")
    return torch.from_numpy(dequantize(kind, symbols, table, row_ids))
