"""The size report and `rbgp compress` on a trained run."""

from __future__ import annotations

import json

import pytest
import torch

from rbgp.cli import main
from rbgp.experiments.compress_cli import model_from_checkpoint
from rbgp.compress.format import load
from rbgp.compress.report import size_table


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    argv = ["train", "--model", "mlp", "--dataset", "synthetic_cifar10", "--hidden", "256,256,256", "--pattern",
            "rbgp4", "--sparsity", "0.9", "--epochs", "1", "--limit-train", "128", "--limit-test", "64",
            "--out-dir", str(out), "--quiet"]
    assert main(argv) == 0
    return out


def test_size_table_counts(run):
    model, _ = model_from_checkpoint(run)
    table = size_table(model, "int4")
    rows = {r["representation"]: r for r in table["rows"]}
    dense, csr, rbgp = rows["dense fp32"], rows["CSR"], rows["RBGP succinct"]
    assert dense["index"] == 0 and rbgp["index"] * 20 < csr["index"]
    assert rbgp["raw"] < csr["raw"] < dense["raw"]
    assert rbgp["huffman"] <= rbgp["quantised"] < rbgp["raw"]
    nnz = sum(m.values.numel() for m in model.modules() if hasattr(m, "values"))
    assert rbgp["raw"] == table["other_bytes"] + 4 * nnz + rbgp["index"]


def test_cli_compress_writes_a_loadable_file(run, tmp_path, capsys):
    out = tmp_path / "m.rbgp"
    assert main(["compress", str(run / "checkpoint.pt"), str(out), "--quantize", "int8", "--huffman",
                 "--json", str(tmp_path / "r.json")]) == 0
    text = capsys.readouterr().out
    assert "| RBGP succinct |" in text and f"wrote {out}" in text
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["file_bytes"] == out.stat().st_size
    model, _ = model_from_checkpoint(run)
    twin, _ = model_from_checkpoint(run)
    with torch.no_grad():
        for p in twin.parameters():
            p.zero_()
    load(out, twin)
    x = torch.randn(4, 3, 32, 32)
    assert (twin(x) - model(x)).abs().max() < 0.05 * model(x).abs().max()
    assert main(["compress", str(tmp_path / "nothing"), str(out)]) == 2


def test_vgg19_at_90_percent_sizes(tmp_path):
    import rbgp
    from rbgp.compress.format import save
    from rbgp.experiments.models import build_model

    torch.manual_seed(0)
    model = build_model("vgg19", 10, 3, 32)
    rbgp.sparsify(model, 0.9, init="kaiming")
    rows = {r["representation"]: r for r in size_table(model, "int8")["rows"]}
    assert rows["RBGP succinct"]["index"] * 100 < rows["CSR"]["index"]  # the structure: under 1% of CSR's indices
    file_bytes = save(model, tmp_path / "vgg.rbgp")["file_bytes"]
    assert file_bytes * 8 <= rows["dense fp32"]["raw"]  # at least 8x smaller than dense fp32, unquantised
