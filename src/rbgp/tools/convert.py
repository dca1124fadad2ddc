"""`rbgp convert MODEL_DIR OUT_DIR`: a transformers model saved with `save_pretrained`, converted to RBGP with
calibration text, written where `rbgp.from_pretrained` loads it.

The calibration text is tokenised with the model's own tokenizer when MODEL_DIR has one, else as UTF-8
bytes (the model's vocabulary must then hold 256 ids), and cut into consecutive windows of
`seq_len` tokens. The output folder is written whole into a temporary sibling and renamed into
place, so it never holds a half-written model.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from rbgp.files import check_input_dir, check_output_dir, write_json, write_text

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "vocab.txt",
    "tokenizer.model",
    "spiece.model",
)


def _model_class(config: Any):
    """The class named in the config's `architectures`, else AutoModelForCausalLM."""
    import transformers

    for name in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    return transformers.AutoModelForCausalLM


def calibration_windows(text: str, tokenizer: Any, vocab_size: int, seq_len: int, samples: int) -> torch.Tensor:
    """(windows, seq_len) token ids: consecutive windows of the tokenised text, at most `samples`."""
    if not text.strip():
        raise ValueError("the calibration text is empty")
    if tokenizer is not None:
        ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    else:
        if vocab_size < 256:
            raise ValueError(
                f"the model folder has no tokenizer and its vocabulary ({vocab_size} ids) cannot hold "
                f"bytes (256 ids needed); save the tokenizer with the model"
            )
        ids = list(text.encode("utf-8"))
    count = min(samples, len(ids) // seq_len)
    if count == 0:
        raise ValueError(
            f"the calibration text has {len(ids)} tokens, fewer than one window of --seq-len {seq_len}; "
            f"give more text or a shorter --seq-len"
        )
    return torch.tensor(ids[: count * seq_len], dtype=torch.long).view(count, seq_len)


def convert_pretrained(
    model_dir: str | Path,
    out_dir: str | Path,
    sparsity: float,
    calibration_file: str | Path,
    samples: int = 128,
    seq_len: int = 128,
    batch_size: int = 8,
    distribution: str = "uniform",
    **sparsify_kwargs: Any,
) -> Any:
    """Load MODEL_DIR, convert it with `rbgp.sparsify(..., calibration=...)`, save to OUT_DIR; the report."""
    from transformers import AutoConfig, AutoTokenizer

    from rbgp.nn import sparsify
    from rbgp.nn.calibration import max_positions

    model_dir = check_input_dir(model_dir, "MODEL_DIR")
    if not (model_dir / "config.json").is_file():
        raise ValueError(
            f"MODEL_DIR {str(model_dir)!r} has no config.json: give a folder written by a transformers "
            f"model's save_pretrained"
        )
    out_dir = check_output_dir(out_dir, "OUT_DIR")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ValueError(f"OUT_DIR {str(out_dir)!r} exists and is not empty; give a new folder")
    calibration_file = Path(calibration_file)
    if not calibration_file.is_file():
        raise ValueError(f"--calibration {str(calibration_file)!r} is not a file")
    for name, value in (("--samples", samples), ("--seq-len", seq_len), ("--batch-size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    config = AutoConfig.from_pretrained(str(model_dir))
    limit = max_positions(config)
    if limit is not None and seq_len > limit:
        raise ValueError(f"--seq-len {seq_len} is longer than the model takes ({limit} positions)")
    has_tokenizer = any((model_dir / f).is_file() for f in TOKENIZER_FILES)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir)) if has_tokenizer else None
    try:
        text = calibration_file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"--calibration {str(calibration_file)!r} is not UTF-8 text ({err.reason} at byte {err.start})"
        ) from None
    windows = calibration_windows(text, tokenizer, int(getattr(config, "vocab_size", 0) or 0), seq_len, samples)
    model = _model_class(config).from_pretrained(str(model_dir)).eval()
    batches = [{"input_ids": b} for b in windows.split(batch_size)]
    report = sparsify(model, sparsity, calibration=batches, distribution=distribution, **sparsify_kwargs)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(str(tmp))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        facts = {
            "source": str(model_dir),
            "calibration_file": str(calibration_file),
            "calibration_windows": int(windows.shape[0]),
            "seq_len": seq_len,
            "tokenizer": "model's own" if tokenizer else "utf-8 bytes",
            **report.to_dict(),
        }
        write_json(tmp / "rbgp_report.json", facts)
        write_text(tmp / "rbgp_report.md", report.table() + "\n")
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def add_convert_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a saved transformers model to RBGP with calibration text",
        description="Convert a transformers model saved with save_pretrained into RBGP4 layers fitted to "
        "calibration text (structure chosen from the data, exact per-group least-squares "
        "weights), and save it where rbgp.from_pretrained(ModelClass, OUT_DIR) loads it.",
    )
    p.add_argument("model_dir", metavar="MODEL_DIR", help="folder written by save_pretrained (config.json, weights)")
    p.add_argument("out_dir", metavar="OUT_DIR", help="new folder for the converted model")
    p.add_argument("--sparsity", type=float, default=0.75, help="fraction of zero weights per layer (default 0.75)")
    p.add_argument("--calibration", required=True, metavar="FILE", help="UTF-8 text to calibrate on")
    p.add_argument("--samples", type=int, default=128, help="calibration windows (default 128)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per window (default 128)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default 8)")
    p.add_argument(
        "--distribution",
        default="uniform",
        choices=["uniform", "hw", "erk"],
        help="how the sparsity is spread over layers (default uniform)",
    )
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB", help="layers to keep dense (repeatable)")
    p.add_argument(
        "--targets",
        default="dense",
        choices=["dense", "layer"],
        help="fit each layer to the unconverted model's outputs (dense, default) or to the dense layer on the "
        "converted model's inputs (layer, as SparseGPT)",
    )
    p.set_defaults(func=_cmd_convert)


def _cmd_convert(args: argparse.Namespace) -> int:
    report = convert_pretrained(
        args.model_dir,
        args.out_dir,
        args.sparsity,
        args.calibration,
        args.samples,
        args.seq_len,
        args.batch_size,
        args.distribution,
        exclude=args.exclude,
        targets=args.targets,
    )
    print(report.table())
    print(f"\nwritten to {args.out_dir} (load it with rbgp.from_pretrained(<model class>, {json.dumps(args.out_dir)}))")
    return 0
