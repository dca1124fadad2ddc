"""Inference from a compressed file under a memory budget: streamed decoding, the plan, `rbgp infer`."""

from __future__ import annotations

import json

import pytest
import torch

from rbgp.cli import main
from rbgp.experiments.compress_cli import model_from_checkpoint, model_from_config
from rbgp.compress.format import read
from rbgp.compress.infer import CompressedRunner, parse_bytes


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer")
    argv = ["train", "--model", "cnn", "--dataset", "synthetic_cifar10", "--hidden", "16,32,64,128", "--pattern",
            "rbgp4", "--sparsity", "0.75", "--epochs", "1", "--limit-train", "64", "--limit-test", "32",
            "--out-dir", str(root / "run"), "--quiet"]
    assert main(argv) == 0
    assert main(["compress", str(root / "run"), str(root / "m.rbgp"), "--quantize", "int8", "--huffman"]) == 0
    return root


def test_parse_bytes():
    assert parse_bytes("64MB") == 64 << 20 and parse_bytes("512k") == 512 << 10 and parse_bytes("100") == 100
    assert parse_bytes("1.5GB") == int(1.5 * (1 << 30))
    for bad in ("lots", "-1MB", "0"):
        with pytest.raises(ValueError, match="memory size"):
            parse_bytes(bad)


def _runner(root):
    header, _ = read(root / "m.rbgp")
    return CompressedRunner(root / "m.rbgp", model_from_config(header["extra"]["train_config"]))


def test_streamed_matches_resident_and_holds_one_layer(compressed):
    run = _runner(compressed)
    reference, _ = model_from_checkpoint(compressed / "run")
    x = torch.randn(5, 3, 32, 32)
    resident = run(x)
    assert (resident - reference(x)).abs().max() < 0.05 * reference(x).abs().max()  # int8
    run.set_mode("streamed")
    held = []
    for m in run.model.modules():
        if list(m.parameters(recurse=False)):
            m.register_forward_hook(lambda mod, a, o: held.append(
                sum(p.numel() for mm in run.model.modules() for p in mm.parameters(recurse=False))))
    assert torch.equal(run(x), resident)
    assert max(held) <= run.largest_layer_bytes // 4  # never more than one layer decoded
    assert all(p.numel() == 0 for p in run.model.parameters())  # dropped after use
    run.set_mode("resident")
    assert torch.equal(run(x), resident)


def test_plan_respects_the_budgets(compressed):
    run = _runner(compressed)
    x = torch.randn(64, 3, 32, 32)
    per = run.activation_bytes_per_sample((3, 32, 32))
    roomy = run.plan(x, 64 << 20, reps=1)
    assert roomy.mode == "resident" and roomy.estimate_bytes <= 64 << 20
    tight = run.estimate("resident", 1, per) - 1  # no resident batch fits; streamed batch 1 does
    assert run.estimate("streamed", 1, per) <= tight
    plan = run.plan(x, tight, reps=1)
    assert plan.mode == "streamed" and plan.estimate_bytes <= tight
    with pytest.raises(ValueError, match="memory budget .* is below"):
        run.plan(x, 1000)
    with pytest.raises(ValueError, match="latency budget"):
        run.plan(x, 64 << 20, latency_budget_s=1e-9, reps=1)


def test_cli_infer(compressed, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["infer", str(compressed / "m.rbgp"), "--data", "synthetic", "--samples", "64", "--memory-budget",
                 "32MB", "--fixed-batch", "1,4", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "chosen: resident" in text and "fixed batch 4 (resident)" in text
    report = json.loads(out.read_text())
    assert report["chosen"]["throughput"] > 0 and set(report["fixed"]) == {"1", "4"}
    assert main(["infer", str(compressed / "m.rbgp"), "--memory-budget", "huge"]) == 2
    assert "memory size 'huge'" in capsys.readouterr().err


def _swap_structure_id(header, tensors):
    key = next(k for k in tensors if k.endswith("structure_id"))
    tensors[key] = tensors[key].flip(0).clone()


def _drop_values(header, tensors):
    for k in [k for k in tensors if k.endswith(".values::table")][:1]:
        del tensors[k]


@pytest.mark.parametrize("change", [
    _swap_structure_id,
    _drop_values,
    lambda h, t: next(iter(h["entries"].values())).pop("kind"),
    lambda h, t: h.update(entries=5),
])
def test_infer_refuses_crafted_files_in_one_line(compressed, tmp_path, capsys, craft, change):
    bad = tmp_path / "bad.rbgp"
    craft(compressed / "m.rbgp", bad, change)
    assert main(["infer", str(bad), "--data", "synthetic", "--samples", "8"]) == 2
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if "Warning" not in ln]
    assert len(err) == 1 and err[0].startswith("rbgp infer: error: ") and str(bad) in err[0], err


def test_deeply_nested_header_is_refused(tmp_path):
    import struct

    from rbgp.compress.format import CompressedFileError

    meta = json.dumps({"__metadata__": {"rbgp": "[" * 100_000 + "]" * 100_000}}).encode()
    meta += b" " * (-len(meta) % 8)
    path = tmp_path / "deep.rbgp"
    path.write_bytes(struct.pack("<Q", len(meta)) + meta)
    with pytest.raises(CompressedFileError, match="not an rbgp compressed model file"):
        read(path)
