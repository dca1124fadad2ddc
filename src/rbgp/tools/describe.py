"""Describe a layer's mask: factors, expansion, load balance and storage, for `rbgp pattern`.

Describing costs more than building: the storage comparison materialises the dense mask, and a mask
without factor graphs gets its spectrum from a CSR copy of itself. Both are estimated with the build
and refused together, before anything is built, when they do not fit the memory limit
(`rbgp.patterns.resources`).
"""

from __future__ import annotations

from typing import Any

from rbgp.graphs import BipartiteGraph
from rbgp.patterns import RBGP, RBGP4, Pattern, SparseMask, get_pattern
from rbgp.patterns.resources import Cost, cost

FACTOR_NAMES = ("G_o (outer)", "G_r (repeat)", "G_i (inner)", "G_b (block)")


def build_and_describe(
    kind: str, out: int, inp: int, sparsity: float, seed: int = 0, **pattern_kwargs: Any
) -> tuple[SparseMask, dict[str, Any]]:
    """Build the mask of an (out, inp) weight and a plain-data description of it.

    Raises ValueError for bad arguments, and a ResourceError (a ValueError) before building anything
    when building and describing the mask would need more memory than the limit."""
    pattern = get_pattern(kind, **pattern_kwargs)
    pattern.check_resources(
        (out, inp), sparsity, extra=describe_cost(pattern, out, inp, sparsity), action="to build and describe"
    )
    mask = pattern.build((out, inp), sparsity, seed)
    desc: dict[str, Any] = {
        "kind": kind,
        "shape": [out, inp],
        "requested_sparsity": sparsity,
        "seed": seed,
        **{k: v for k, v in mask.summary().items() if k not in ("factors", "kind", "weight_shape", "matrix_shape")},
    }
    if mask.graph is not None:
        names = FACTOR_NAMES if len(mask.graph.factors) == 4 else [f"G{i}" for i in range(len(mask.graph.factors))]
        desc["factors"] = [{"factor": n, **f.summary()} for n, f in zip(names, mask.graph.factors)]
    else:
        graph = BipartiteGraph.from_biadjacency(mask.array)
        desc["normalized_sigma2"] = graph.normalized_sigma2()
        desc["spectral_gap"] = graph.spectral_gap()
        rows = mask.array.sum(axis=1)
        desc["nnz_per_row_range"] = [int(rows.min()), int(rows.max())]
    return mask, desc


def describe_cost(pattern: Pattern, out: int, inp: int, sparsity: float) -> Cost:
    """What describing costs on top of building: the dense mask (BSR count) and, for masks without
    factor graphs, a CSR graph of the mask and its Lanczos spectrum (about 40 bytes a non-zero)."""
    cells = out * inp
    if isinstance(pattern, (RBGP4, RBGP)):
        return cost(cells, 2e-9 * cells)
    nnz = (1.0 - sparsity) * cells if isinstance(sparsity, (int, float)) else cells
    return cost(cells + 40 * nnz, 2e-9 * cells + 3e-7 * nnz)


def _fmt_factor(f: dict[str, Any]) -> str:
    degrees = f"({f['left_degree']},{f['right_degree']})"
    if f.get("name") == "complete" or f["m"] * f["n"] == f.get("num_edges", -1):
        spectral = "complete"
    else:
        ram = "yes" if f["ramanujan"] else "NO"
        spectral = f"sigma2={f['sigma2']:.3f} bound={f['bound']:.3f} margin={f['margin']:+.3f} Ramanujan: {ram}"
    return f"  {f['factor']:<14} {f['m']:>5} x {f['n']:<5} degrees {degrees:<10} {spectral}"


def format_description(desc: dict[str, Any]) -> str:
    """Human-readable lines of a `build_and_describe` description."""
    out, inp = desc["shape"]
    lines = [f"{desc['kind']} pattern for a {out} x {inp} weight (seed {desc['seed']})"]
    if "factors" in desc:
        lines.append("factors (mask = Kronecker product, left = outputs, right = inputs):")
        lines += [_fmt_factor(f) for f in desc["factors"]]
    lines.append(
        f"sparsity: {desc['sparsity']:.4f} (requested {desc['requested_sparsity']:g}), "
        f"density {desc['density']:.4f}, non-zeros {desc['nnz']:,}"
    )
    if desc.get("nnz_per_row") is not None:
        lines.append(f"non-zeros per row: {desc['nnz_per_row']} in every row (perfect load balance)")
    else:
        lo, hi = desc.get("nnz_per_row_range", ["?", "?"])
        lines.append(f"non-zeros per row: varies from {lo} to {hi}")
    if "rows_per_group" in desc:
        lines.append(
            f"dense sub-GEMMs: {desc['groups']} groups of {desc['rows_per_group']} rows sharing "
            f"{desc['nnz_per_row']} input columns"
            + (
                f" ({desc['padded_rows']} padding rows complete the groups: computed, then dropped)"
                if desc.get("padded_rows")
                else ""
            )
        )
    lines.append(
        f"expansion: normalised sigma2/sigma1 = {desc['normalized_sigma2']:.4f}, "
        f"spectral gap = {desc['spectral_gap']:.4f}"
    )
    s, c, b = desc["structure_bytes"], desc["csr_bytes"], desc["bsr_bytes"]
    blk = "x".join(map(str, desc["bsr_block"]))
    lines.append(
        f"structure storage: {s:,} B  vs CSR indices {c:,} B ({c / s:,.0f}x)  vs BSR({blk}) {b:,} B ({b / s:,.1f}x)"
    )
    if "plot" in desc:
        lines.append(f"mask picture: {desc['plot']}")
    return "\n".join(lines)
