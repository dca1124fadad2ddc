"""`rbgp compress`: write a training run's model as a compressed file and print the size report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from torch import nn

from rbgp.compress.quantize import QUANTIZERS

__all__ = ["add_compress_parser", "model_from_checkpoint"]


def add_compress_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compress", help="write a run's model as a compressed file; print its size in every representation",
        description="Rebuild the model of an `rbgp train` checkpoint, write it to OUT in the compressed "
                    "format (safetensors, no pickle; RBGP layers as values + structure id) and print the "
                    "bytes it takes as dense fp32, CSR, BSR and RBGP succinct, each raw, quantised and "
                    "quantised + Huffman-coded, with the ratios to dense fp32.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="RUN/checkpoint.pt of `rbgp train` (or the RUN folder)")
    p.add_argument("out", metavar="OUT", help="the compressed file to write")
    p.add_argument("--quantize", choices=tuple(QUANTIZERS),
                   help="quantise the weights in OUT (per-row scales; the report uses it, default int8)")
    p.add_argument("--huffman", action="store_true", help="Huffman-code the quantised symbols in OUT")
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    p.set_defaults(func=_cmd_compress)


def model_from_checkpoint(path: str | Path) -> nn.Module:
    """The trained model of an `rbgp train` checkpoint, with plain weights (masks and thresholds of
    magnitude / AutoSparse runs baked in)."""
    from rbgp.train.checkpoint import CHECKPOINT_NAME, load_checkpoint
    from rbgp.train.config import LEGACY_DEFAULTS, TrainConfig
    from rbgp.train.data import dataset_shape
    from rbgp.train.loop import build_run_model
    from rbgp.train.methods import bake, make_method

    path = Path(path)
    saved = load_checkpoint(path / CHECKPOINT_NAME if path.is_dir() else path)
    config = TrainConfig.from_dict({**LEGACY_DEFAULTS, **saved["args"]})
    classes, shape = dataset_shape(config.dataset)
    model, _ = build_run_model(config, classes, shape)
    make_method(config).prepare(model, 1)
    model.load_state_dict(saved["model"])
    return bake(model).eval()


def _cmd_compress(args: argparse.Namespace) -> int:
    from rbgp.compress.format import save
    from rbgp.compress.report import size_report, size_table
    from rbgp.files import write_json

    model = model_from_checkpoint(args.checkpoint)
    header = save(model, args.out, quantize=args.quantize, huffman=args.huffman)
    table = size_table(model, args.quantize or "int8")
    what = f"{args.quantize or 'fp32'}{' + Huffman' if args.huffman else ''}"
    print(size_report(table))
    print(f"\nwrote {args.out}: {header['file_bytes']:,} bytes ({what}); dense fp32 would take "
          f"{table['rows'][0]['raw']:,} ({table['rows'][0]['raw'] / header['file_bytes']:.1f}x)")
    if args.json:
        write_json(args.json, {**table, "file": str(args.out), "file_bytes": header["file_bytes"],
                               "file_quantize": args.quantize, "file_huffman": args.huffman})
    return 0
