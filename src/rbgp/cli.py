"""The `rbgp` command: `rbgp pattern ...`, `rbgp bench ...`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from rbgp.patterns import PATTERNS


def _add_pattern(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pattern", help="build a sparsity pattern for one layer and describe it",
                       description="Build the mask of one (out, in) weight and print its factors, density, "
                                   "load balance, expansion and storage cost against CSR/BSR.")
    p.add_argument("--out", type=int, default=512, help="output features / channels (default 512)")
    p.add_argument("--in", dest="inp", type=int, default=4608,
                   help="input features, or c_in*kh*kw for a conv (default 4608 = 512*3*3, a VGG19 layer)")
    p.add_argument("--sparsity", type=float, default=0.9, help="fraction of zero weights, in (0, 1)")
    p.add_argument("--kind", default="rbgp4", choices=list(PATTERNS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--block", type=int, nargs=2, metavar=("H", "W"), help="micro-block (rbgp4) or block size")
    p.add_argument("--group-rows", type=int, help="rbgp4: rows sharing one column set (default 128)")
    p.add_argument("--plot", metavar="PNG", help="write a picture of the mask (full view and a zoomed tile)")
    p.add_argument("--json", action="store_true", help="print the description as JSON")
    p.set_defaults(func=_cmd_pattern)


def _cmd_pattern(args: argparse.Namespace) -> int:
    from rbgp.tools.describe import build_and_describe, format_description
    from rbgp.tools.plots import plot_mask

    kwargs = {}
    if args.block:
        kwargs["block"] = tuple(args.block)
    if args.group_rows:
        if args.kind != "rbgp4":
            raise ValueError("--group-rows applies to --kind rbgp4 only")
        kwargs["group_rows"] = args.group_rows
    if args.kind == "nm":
        kwargs = {"n": 2, "m": 4}
    mask, desc = build_and_describe(args.kind, args.out, args.inp, args.sparsity, args.seed, **kwargs)
    if args.plot:
        plot_mask(mask, args.plot)
        desc["plot"] = args.plot
    print(json.dumps(desc, indent=2) if args.json else format_description(desc))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rbgp", description="Fast sparse neural networks from Ramanujan "
                                                               "bipartite graph products.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_pattern(sub)
    from rbgp.bench.cli import add_bench_parser

    add_bench_parser(sub)
    from rbgp.train.cli import add_train_parsers; add_train_parsers(sub)
    from rbgp.compress.cli import add_compress_parser

    add_compress_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"rbgp {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
