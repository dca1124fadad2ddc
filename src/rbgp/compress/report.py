"""How many bytes a sparse model takes in each representation: dense fp32, CSR, BSR and RBGP's succinct
form, each raw, quantised, and quantised plus Huffman-coded.

Counted per sparse layer (RBGP and masked): values plus indices. CSR stores every non-zero with an
int32 column index plus int32 row pointers; BSR stores every non-empty block of the pattern's natural
block size (zeros inside included) with one int32 index per block; RBGP stores its non-zeros and its
factor graphs' neighbour lists. Quantised: 1 byte (int8) or 4 bits (int4, kmeans16) per stored value
plus per-row scales (or a 16-entry codebook); Huffman: the measured size of the canonical Huffman code
of those symbols. Every other tensor (dense layers, biases, norms) counts as fp32 in every row.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from rbgp.compress.huffman import encode
from rbgp.compress.quantize import QUANTIZERS, quantize
from rbgp.nn import SPARSE_TYPES, MaskedConv2d, MaskedLinear, RBGPConv2d, RBGPLinear

__all__ = ["REPRESENTATIONS", "size_report", "size_table"]

REPRESENTATIONS = ("dense fp32", "CSR", "BSR", "RBGP succinct")


def _layer_sizes(module: RBGPLinear | RBGPConv2d | MaskedLinear | MaskedConv2d, kind: str) -> dict[str, dict[str, int]]:
    """{representation: {"index", "raw", "quantised", "huffman"} bytes} of one sparse layer."""
    s = module.structure
    mask = s.array
    rows, cols = mask.shape
    w = module.dense_weight().detach().float().reshape(rows, cols).cpu().numpy()
    nnz = int(mask.sum())
    bh, bw = s.bsr_block
    blocks = int(mask.reshape(rows // bh, bh, cols // bw, bw).any(axis=(1, 3)).sum())
    stored = {"dense fp32": rows * cols, "CSR": nnz, "BSR": blocks * bh * bw, "RBGP succinct": nnz}
    index = {"dense fp32": 0, "CSR": s.csr_bytes(), "BSR": s.bsr_bytes(), "RBGP succinct": s.structure_bytes}
    q = quantize(w[mask], np.nonzero(mask)[0], rows, kind)
    zero = q.alphabet // 2 if kind != "kmeans16" else int(np.argmin(np.abs(q.table)))
    bits = 8 if q.alphabet > 16 else 4
    table = 4 * q.table.size
    out = {}
    for r in REPRESENTATIONS:
        zeros = stored[r] - nnz  # the zeros a representation stores besides the non-zeros
        coded = encode(np.concatenate([q.symbols, np.full(zeros, zero, dtype=np.uint8)]), q.alphabet)
        huffman = len(coded.data) + coded.lengths.size + 8 * coded.offsets.size
        out[r] = {
            "index": index[r],
            "raw": 4 * stored[r] + index[r],
            "quantised": -(-stored[r] * bits // 8) + table + index[r],
            "huffman": huffman + table + index[r],
        }
    return out


def size_table(model: nn.Module, quantize_kind: str = "int8") -> dict[str, Any]:
    """Bytes per representation for `model`: raw, quantised with `quantize_kind`, and quantised + Huffman."""
    if quantize_kind not in QUANTIZERS:
        raise ValueError(f"unknown quantize {quantize_kind!r}; valid: {', '.join(QUANTIZERS)}")
    sparse = [(n, m) for n, m in model.named_modules() if isinstance(m, SPARSE_TYPES)]
    if not sparse:
        raise ValueError("the model has no sparse layer (sparsify it first)")
    owned = {id(t) for _, m in sparse for t in [*m.parameters(recurse=False), *m.buffers(recurse=False)]}
    other = sum(
        t.numel() * 4 for t in [*model.parameters(), *model.buffers()] if id(t) not in owned and t.is_floating_point()
    )
    totals = {r: {"index": 0, "raw": other, "quantised": other, "huffman": other} for r in REPRESENTATIONS}
    for _, m in sparse:
        for r, sizes in _layer_sizes(m, quantize_kind).items():
            for k, v in sizes.items():
                totals[r][k] += v
    dense = totals["dense fp32"]["raw"]
    return {
        "quantize": quantize_kind,
        "other_bytes": other,
        "layers": len(sparse),
        "rows": [
            {
                "representation": r,
                **totals[r],
                **{f"ratio_{k}": dense / totals[r][k] for k in ("raw", "quantised", "huffman")},
            }
            for r in REPRESENTATIONS
        ],
    }


def size_report(table: dict[str, Any]) -> str:
    """A markdown table of `size_table`'s result."""
    q = table["quantize"]
    lines = [
        f"| representation | index bytes | fp32 values | {q} | {q} + Huffman | dense fp32 / this (fp32, {q}, "
        f"{q} + Huffman) |",
        "|---|---|---|---|---|---|",
    ]
    for r in table["rows"]:
        lines.append(
            f"| {r['representation']} | {r['index']:,} | {r['raw']:,} | {r['quantised']:,} | {r['huffman']:,} | "
            f"{r['ratio_raw']:.1f}x, {r['ratio_quantised']:.1f}x, {r['ratio_huffman']:.1f}x |"
        )
    lines.append(
        f"\n{table['layers']} sparse layers; {table['other_bytes']:,} bytes of other tensors (dense layers, "
        f"biases, norms) count as fp32 in every row; every byte count includes the index bytes."
    )
    return "\n".join(lines)
