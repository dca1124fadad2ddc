"""`rbgp bench --suite decode`, quick: files, rows, the int8/bf16 variants and their errors, bad arguments."""

import json

import pytest

from rbgp.cli import main


def test_decode_bench_writes_json_markdown_png(tmp_path, capsys):
    assert main(["bench", "--suite", "decode", "--quick", "--repeats", "1", "--decode-sparsity", "0.9",
                 "--out-dir", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "decode-quick.json").read_text())
    assert data["command"].startswith("rbgp bench --suite decode --decode-sparsity 0.9 --repeats 1 --quick")
    assert [r["case"] for r in data["results"]] == ["prefill 256", "decode b1", "decode b8"]
    names = ["dense", "rbgp 0.9 fp32", "rbgp 0.9 bf16", "rbgp 0.9 int8"]
    assert all(list(r["speedup"]) == names and min(r["tokens_per_s"].values()) > 0 for r in data["results"])
    errors = data["relative_error"]
    assert errors["rbgp 0.9 fp32"] == 0 and 0 < errors["rbgp 0.9 bf16"] < 0.05 and 0 < errors["rbgp 0.9 int8"] < 0.1
    table = (tmp_path / "decode-quick.md").read_text()
    assert "| decode b1 |" in table
    b1 = data["results"][1]["tokens_per_s"]
    ratio = b1["rbgp 0.9 int8"] / b1["rbgp 0.9 fp32"]
    assert "| decode b1 vs fp32 sparse | - | 1.00x | " in table and f"{ratio:.2f}x |" in table
    assert (tmp_path / "decode-quick.png").stat().st_size > 0


@pytest.mark.parametrize("args,message", [
    (["--decode-sparsity", "0.9,x"], "comma-separated numbers"),
    (["--decode-sparsity", "1.5"], "must lie in (0, 1)"),
    (["--dtype", "bf16"], "runs on the CPU with fp32 activations"),
])
def test_decode_bench_rejects_bad_arguments(tmp_path, capsys, args, message):
    assert main(["bench", "--suite", "decode", "--quick", "--out-dir", str(tmp_path), *args]) == 2
    assert message in capsys.readouterr().err
