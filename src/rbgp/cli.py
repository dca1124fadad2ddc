"""The `rbgp` command: `rbgp pattern ...`, `rbgp bench ...`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from rbgp.patterns import PATTERNS


def _add_pattern(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pattern",
        help="build a sparsity pattern for one layer and describe it",
        description="Build the mask of one (out, in) weight and print its factors, density, "
        "load balance, expansion and storage cost against CSR/BSR.",
    )
    p.add_argument("--out", type=int, default=512, help="output features / channels (default 512)")
    p.add_argument(
        "--in",
        dest="inp",
        type=int,
        default=4608,
        help="input features, or c_in*kh*kw for a conv (default 4608 = 512*3*3, a VGG19 layer)",
    )
    p.add_argument("--sparsity", type=float, default=0.9, help="fraction of zero weights, in (0, 1)")
    p.add_argument("--kind", default="rbgp4", choices=list(PATTERNS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--block", type=int, nargs=2, metavar=("H", "W"), help="micro-block (rbgp4) or block size")
    p.add_argument("--group-rows", type=int, help="rbgp4: rows sharing one column set (default 128)")
    p.add_argument("--plot", metavar="PNG", help="write a picture of the mask (full view and a zoomed tile)")
    p.add_argument("--json", action="store_true", help="print the description as JSON")
    p.set_defaults(func=_cmd_pattern)


def _cmd_pattern(args: argparse.Namespace) -> int:
    from rbgp.files import check_output_file
    from rbgp.tools.describe import build_and_describe, format_description
    from rbgp.tools.plots import plot_mask

    kwargs: dict[str, Any] = {}
    if args.block is not None:
        if args.kind not in ("rbgp4", "block", "hbsnn"):
            raise ValueError(f"--block applies to --kind rbgp4, block and hbsnn, not {args.kind}")
        kwargs["block"] = tuple(args.block)
    if args.group_rows is not None:
        if args.kind != "rbgp4":
            raise ValueError(f"--group-rows applies to --kind rbgp4 only, not {args.kind}")
        kwargs["group_rows"] = args.group_rows
    if args.kind == "nm":
        kwargs = {"n": 2, "m": 4}
    if args.plot:
        check_output_file(args.plot, "--plot")
    mask, desc = build_and_describe(args.kind, args.out, args.inp, args.sparsity, args.seed, **kwargs)
    if args.plot:
        plot_mask(mask, args.plot)
        desc["plot"] = args.plot
    print(json.dumps(desc, indent=2) if args.json else format_description(desc))
    return 0


DRY_RUN_COMMANDS = ("train", "demo", "methods", "reproduce", "bench", "infer")
"""The commands that take minutes: `--dry-run` checks their arguments and stops."""


def build_parser(only_pattern: bool = False) -> argparse.ArgumentParser:
    """The `rbgp` parser; `only_pattern` registers just `rbgp pattern`, whose modules do not import
    torch (so that it starts, and refuses what will not fit, in about a second)."""
    parser = argparse.ArgumentParser(
        prog="rbgp", description="Fast sparse neural networks from Ramanujan bipartite graph products."
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback of an error (by default a user error is one line)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_pattern(sub)
    if not only_pattern:
        _add_torch_commands(sub)
    for name, command in sub.choices.items():  # also accepted after the command: `rbgp train ... --debug`
        command.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help="show the full traceback of an error"
        )
        if name in DRY_RUN_COMMANDS:
            command.add_argument(
                "--dry-run",
                action="store_true",
                help="check every setting, path and input file, print what would run, and stop",
            )
    return parser


def _add_torch_commands(sub: argparse._SubParsersAction) -> None:
    from rbgp.experiments.bench.cli import add_bench_parser

    add_bench_parser(sub)
    from rbgp.experiments.cli import add_train_parsers

    add_train_parsers(sub)
    from rbgp.experiments.compress_cli import add_compress_parser

    add_compress_parser(sub)
    from rbgp.tools.convert import add_convert_parser

    add_convert_parser(sub)


USER_ERRORS = (ValueError, OSError, MemoryError)
"""What a user's input or machine can cause (bad values, paths, files, too little memory): one line
and exit code 2. Anything else is a bug: its traceback, exit code 1."""


MAX_ERROR_LINE = 400
"""Longest error line the CLI prints (a message quoting a huge value is cut)."""


def _user_error_line(err: BaseException) -> str:
    if isinstance(err, MemoryError):
        return f"out of memory ({str(err) or 'the request needs more memory than this machine has'})"
    if isinstance(err, OSError) and err.strerror and err.filename is not None:
        return f"{err.filename}: {err.strerror}"
    line = str(err).splitlines()[0] if str(err) else type(err).__name__
    return (
        line
        if len(line) <= MAX_ERROR_LINE
        else f"{line[: MAX_ERROR_LINE - 60]}... ({len(line)} characters; --debug shows all)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `rbgp` command. User errors: one line on stderr and exit code 2 (argparse's too);
    `--debug` shows their traceback instead."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only_pattern=command == "pattern")
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as err:
        if args.debug:
            raise
        print(f"rbgp {args.command}: error: {_user_error_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"rbgp {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
