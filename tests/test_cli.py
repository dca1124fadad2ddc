import json

import pytest

from rbgp.cli import main


def test_pattern_default_vgg_layer(capsys, tmp_path):
    png = tmp_path / "mask.png"
    assert main(["pattern", "--out", "512", "--in", "4608", "--sparsity", "0.9", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "G_i (inner)" in out and "Ramanujan: yes" in out
    assert "vs CSR" in out
    assert png.stat().st_size > 1000


@pytest.mark.parametrize("kind", ["block", "unstructured", "hbsnn", "nm", "rbgp4"])
def test_pattern_json_all_kinds(capsys, kind):
    sparsity = "0.5" if kind == "nm" else "0.75"
    assert main(["pattern", "--out", "128", "--in", "256", "--sparsity", sparsity, "--kind", kind, "--json"]) == 0
    desc = json.loads(capsys.readouterr().out)
    assert desc["kind"] == kind and 0 < desc["density"] < 1
    assert desc["csr_bytes"] > 0


def test_pattern_bad_input_exit_code(capsys):
    assert main(["pattern", "--out", "7", "--in", "5", "--sparsity", "0.9"]) == 2
    assert "cannot make a 7x5" in capsys.readouterr().err
    assert main(["pattern", "--sparsity", "1.5"]) == 2
    assert "sparsity" in capsys.readouterr().err


def test_bench_quick_writes_results(tmp_path, capsys):
    assert main(["bench", "--device", "cpu", "--quick", "--repeats", "2", "--out-dir", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "cpu-quick.json").read_text())
    assert {r["kind"] for r in data["results"]} == {"linear", "conv"}
    for r in data["results"]:
        assert set(r["timings"]) == {"dense", "rbgp", "csr", "bsr16"}
    assert (tmp_path / "cpu-quick.md").read_text().startswith("Command:")
    assert (tmp_path / "cpu-quick.png").stat().st_size > 1000
