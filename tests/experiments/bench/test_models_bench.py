"""The whole-model benchmark suite on the CPU, tiny: files, rows, failures recorded not raised."""

import json

import pytest

from rbgp.experiments.bench.models import markdown_table, run_model_bench
from rbgp.cli import main


def test_model_bench_writes_json_markdown_png(tmp_path):
    data = run_model_bench(tmp_path, device="cpu", dtype="fp32", models=("resnet18",), batch=2, quick=True,
                           stem="m", distributions=("uniform", "hw"), per_layer=True)
    row, hw = data["results"]
    assert row["model"] == "resnet18" and row["converted_layers"] == 19 and 0.89 < row["global_sparsity"] < 0.92
    assert hw["distribution"] == "hw" and hw["kept_dense"] == [] and 0.88 < hw["global_sparsity"] < 0.92
    assert len(row["per_layer"]) == 19 and all(p["speedup_fwd_bwd"] > 0 for p in row["per_layer"])
    for variant in ("dense", "rbgp"):
        for phase in ("infer", "train"):
            assert row["timings"][variant][phase]["median_ms"] > 0
    assert row["speedup_infer"] > 0 and row["params_rbgp"] < row["params_dense"] / 5
    assert json.loads((tmp_path / "m.json").read_text())["results"][0]["model"] == "resnet18"
    text = (tmp_path / "m.md").read_text()
    assert "| resnet18 | uniform | 2 | 0.906 | no | train |" in text and "Per layer, resnet18, distribution hw" in text
    assert (tmp_path / "m.png").stat().st_size > 0
    assert "resnet18" in markdown_table(data)


def test_model_bench_rejects_bad_arguments(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown models \\['alexnet'\\]"):
        run_model_bench(tmp_path, device="cpu", models=("alexnet",))
    assert main(["bench", "--suite", "models", "--device", "cpu", "--dtype", "fp32", "--models", "vgg",
                 "--out-dir", str(tmp_path)]) == 2
    assert "--models 'vgg': valid names are vgg19, resnet18, wrn40_4" in capsys.readouterr().err
    assert main(["bench", "--suite", "models", "--device", "cpu", "--models", "resnet18", "--distribution", "erk,x",
                 "--out-dir", str(tmp_path)]) == 2
    assert "valid names are uniform, erk, hw" in capsys.readouterr().err
