"""Fuzz the `rbgp` command line: whatever the arguments, exit code 0 or 2 and, for an error, one line
on stderr; never a traceback (an exception escaping `main`).

Every flag of every subcommand is drawn with values that are valid, out of range, non-finite,
malformed, or paths of every kind (folder, file, garbage file, a real checkpoint and compressed
model, a path under a file, a missing one). The commands that train or time for minutes run with
`--dry-run` (all settings, paths and input files are still checked); `pattern` and `compress` run
for real, under a 256 MB memory limit so that no draw builds a large mask.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rbgp.cli import DRY_RUN_COMMANDS, build_parser, main

_PARSER = build_parser()
_SUB = next(a for a in _PARSER._actions if isinstance(a, argparse._SubParsersAction))
_COMMANDS = dict(_SUB.choices)
_SKIP = {"help", "debug", "dry_run", "quiet"}


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    """Path strings of every kind, including a real tiny checkpoint and a compressed model."""
    from rbgp.experiments.compress_cli import model_from_checkpoint
    from rbgp.compress.format import save
    from rbgp.experiments import TrainConfig, train

    root = tmp_path_factory.mktemp("fuzz")
    run = root / "run"
    train(TrainConfig(model="mlp", dataset="synthetic_cifar10", model_kwargs={"hidden": [32]}, pattern="rbgp4",
                      sparsity=0.75, epochs=1, batch_size=16, limit_train=32, limit_test=16, max_steps=1),
          run, quiet=True)
    model, config = model_from_checkpoint(run)
    save(model, root / "model.rbgp", extra={"train_config": config})
    (root / "pristine").mkdir()  # copies no fuzzed command can overwrite, for the config mutations
    (root / "pristine" / "checkpoint.pt").write_bytes((run / "checkpoint.pt").read_bytes())
    (root / "pristine" / "model.rbgp").write_bytes((root / "model.rbgp").read_bytes())
    (root / "garbage.pt").write_bytes(b"\x00not a checkpoint" * 8)
    (root / "folder").mkdir()
    # for `convert`: a tiny saved transformers model and calibration text
    import transformers

    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=256, n_positions=32, n_embd=32, n_layer=1,
                                                         n_head=2, bos_token_id=10, eos_token_id=10)
                                 ).save_pretrained(root / "hf")
    (root / "text.txt").write_text("In the beginning God created the heaven and the earth.\n" * 20)
    return [str(p) for p in (run, run / "checkpoint.pt", root / "model.rbgp", root / "garbage.pt",
                             root / "folder", root / "missing" / "x", root / "garbage.pt" / "under",
                             root / "new" / "out.png", root / "new2", root / "hf", root / "text.txt")] + ["", "."]


_TEXT = st.sampled_from(["", "x", "-1", "0", "1", "0.5", "1e9", "nan", "inf", "-inf", "a,b", ",", "1,0", "0,0",
                         "64MB", "0KB", "-5MB", "infGB", "50ms", "0s", "1,16", "vgg19", "uniform,erk", "rbgp4",
                         "dense", "--", "é", "1" * 30])
_INTS = st.one_of(st.integers(-3, 5), st.integers(-(10**20), 10**20), st.sampled_from([0, 1, 16, 64, 10**9]))
_FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([0.0, 0.5, 0.9, 0.999999, 1.0, -0.5, 1e308]))


def _value(action: argparse.Action, path_list: list[str]) -> st.SearchStrategy[str]:
    if action.choices is not None:
        return st.one_of(st.sampled_from([str(c) for c in action.choices]), _TEXT)
    name = getattr(action.type, "__name__", "")
    if action.type is int:
        return st.one_of(_INTS.map(str), _TEXT)
    if action.type is float:
        return st.one_of(_FLOATS.map(repr), _TEXT)
    if name in ("_ints", "_floats"):
        nums = _INTS.map(str) if name == "_ints" else _FLOATS.map(repr)
        return st.one_of(st.lists(nums, min_size=1, max_size=3).map(",".join), _TEXT)
    return st.one_of(st.sampled_from(path_list), _TEXT)


@st.composite
def _argv(draw, path_list: list[str]) -> list[str]:
    command = draw(st.sampled_from(sorted(_COMMANDS)))
    parser = _COMMANDS[command]
    argv = [command]
    optional = [a for a in parser._actions if a.option_strings and a.dest not in _SKIP]
    for action in draw(st.lists(st.sampled_from(optional), max_size=6, unique_by=lambda a: a.dest)):
        argv.append(draw(st.sampled_from(action.option_strings)))
        if action.nargs == 0:
            continue
        count = action.nargs if isinstance(action.nargs, int) else 1
        argv += [draw(_value(action, path_list)) for _ in range(count)]
    for action in parser._actions:
        if not action.option_strings and action.dest not in _SKIP:  # positionals: paths
            argv.append(draw(st.sampled_from(path_list)))
    if command in DRY_RUN_COMMANDS:
        argv.append("--dry-run")
    if any(a.dest == "quiet" for a in parser._actions):
        argv.append("--quiet")
    return argv


@settings(max_examples=250, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_no_traceback_and_exit_0_or_2(data, paths, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("RBGP_MEMORY_LIMIT", "256M")
    monkeypatch.chdir(tmp_path)  # default output folders (runs/...) land in a temp folder
    argv = data.draw(_argv(paths))
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse: usage error (2) or --help (0)
        code = exit_.code
    err = capsys.readouterr().err
    assert code in (0, 2), (argv, code, err)
    if code == 2 and not err.startswith("usage:"):
        lines = _without_warnings(err)
        assert len(lines) == 1 and lines[0].startswith(f"rbgp {argv[0]}: error: "), (argv, err)


# wrongly typed, out of range, huge or nested values for a config field read from a file
_WRONG = st.sampled_from(["0.9", "x", "", 5, -1, 0, 10**30, 1e308, float("nan"), float("inf"), None, True, [1], [],
                          {"a": 1}, [[[[[[1]]]]]], "x" * 5000, ["a", 2], {"hidden": "wide"}])


def _mutated_config(data, config: dict) -> tuple[dict, str]:
    config = json.loads(json.dumps(config))
    field = data.draw(st.sampled_from(sorted(config) + ["model_kwargs.hidden", "(missing sparsity)"]))
    if field == "(missing sparsity)":
        config.pop("sparsity", None)
    elif field == "model_kwargs.hidden" and isinstance(config.get("model_kwargs"), dict):
        config["model_kwargs"]["hidden"] = data.draw(_WRONG)
    else:
        config[field] = data.draw(_WRONG)
    return config, field


@settings(max_examples=80, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_typed_config_mutations_of_files(data, paths, capsys, monkeypatch, tmp_path):
    """A checkpoint or compressed file whose `train_config` holds a wrongly typed, missing or absurd field
    (crafted with a valid checksum): `compress`, `infer` and `train --resume` exit 0 or 2 with one line."""
    from safetensors.torch import save as st_save

    from rbgp.compress.format import _checksum, read
    from rbgp.experiments.checkpoint import MAGIC, load_checkpoint

    monkeypatch.setenv("RBGP_MEMORY_LIMIT", "256M")
    tmp_path = Path(tempfile.mkdtemp(dir=tmp_path))  # one folder per example
    monkeypatch.chdir(tmp_path)
    pristine = Path(paths[0]).parent / "pristine"
    if data.draw(st.booleans()):
        state = load_checkpoint(pristine / "checkpoint.pt")
        state["args"], field = _mutated_config(data, state["args"])
        buffer = io.BytesIO()
        torch.save(state, buffer)
        (tmp_path / "run").mkdir()
        payload = buffer.getvalue()
        (tmp_path / "run" / "checkpoint.pt").write_bytes(MAGIC + hashlib.sha256(payload).digest() + payload)
        argv = data.draw(st.sampled_from([["compress", "run", "out.rbgp"],
                                          ["train", "--resume", "--out-dir", "run", "--dry-run", "--quiet"]]))
    else:
        header, tensors = read(pristine / "model.rbgp")
        header["extra"]["train_config"], field = _mutated_config(data, header["extra"]["train_config"])
        header["checksum"] = _checksum(header, tensors)
        (tmp_path / "m.rbgp").write_bytes(st_save(tensors, metadata={"rbgp": json.dumps(header, sort_keys=True)}))
        argv = ["infer", "m.rbgp", "--data", "synthetic", "--samples", "8", "--fixed-batch", "4", "--dry-run"]
    code = main(argv)
    err = capsys.readouterr().err
    assert code in (0, 2), (field, argv, code, err)
    if code == 2:
        lines = _without_warnings(err)
        assert len(lines) == 1 and lines[0].startswith(f"rbgp {argv[0]}: error: ") and len(lines[0]) < 1000, (field, err)


def _without_warnings(err: str) -> list[str]:
    """stderr's lines less the warnings (a "file:line: SomeWarning: message" line and the indented
    source line that `warnings` prints after it)."""
    lines, after_warning = [], False
    for ln in err.strip().splitlines():
        if "Warning" in ln or (after_warning and ln.startswith("  ")):
            after_warning = True
            continue
        after_warning = False
        lines.append(ln)
    return lines


def test_debug_shows_the_traceback(capsys):
    assert main(["train", "--hidden=-4", "--dry-run"]) == 2
    assert capsys.readouterr().err.startswith("rbgp train: error: hidden widths")
    with pytest.raises(ValueError, match="hidden widths"):
        main(["train", "--hidden=-4", "--dry-run", "--debug"])
    with pytest.raises(ValueError, match="hidden widths"):
        main(["--debug", "train", "--hidden=-4", "--dry-run"])



def test_compress_a_checkpoint_whose_weights_do_not_fit_its_config(paths, capsys, tmp_path):
    from rbgp.experiments.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(Path(paths[0]).parent / "pristine" / "checkpoint.pt")
    state["args"]["model_kwargs"] = {"hidden": [64]}  # valid, but the saved weights are 32 wide
    save_checkpoint(tmp_path / "checkpoint.pt", state)
    assert main(["compress", str(tmp_path / "checkpoint.pt"), str(tmp_path / "out.rbgp")]) == 2
    lines = _without_warnings(capsys.readouterr().err)
    assert len(lines) == 1 and "do not fit the model their config builds" in lines[0] and "size mismatch" in lines[0]
    assert not (tmp_path / "out.rbgp").exists()
