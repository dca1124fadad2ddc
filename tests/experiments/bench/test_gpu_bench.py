"""The GPU benchmark's pure parts on the CPU: case list, result rows, table and plot from fake timings."""

import json

import pytest
import torch

from rbgp.experiments.bench import gpu


def test_case_list_covers_the_issue():
    cases = gpu.gpu_cases()
    lin = [c for c in cases if c.kind == "linear"]
    assert {(c.in_features, c.rows) for c in lin} == {(n, b) for n in (4096, 8192) for b in (4096, 8192)}
    assert sorted({c.density for c in lin}) == [1 / 16, 1 / 8, 1 / 4, 1 / 2]
    convs = [c for c in cases if c.kind == "conv"]
    assert {c.model for c in convs} == {"vgg19", "wrn40_4"} and {c.batch for c in convs} == {128, 256}
    assert all(c.density == 0.1 and c.in_features % 9 == 0 and c.in_features > 27 for c in convs)
    vgg = {(ci, co, hw): n for ci, co, hw, n in gpu.conv_layers("vgg19")}
    assert vgg[(512, 512, 2)] == 4 and vgg[(64, 64, 32)] == 1 and sum(vgg.values()) == 15  # 16 convs, first dense
    wrn = gpu.conv_layers("wrn40_4")
    assert sum(n for *_, n in wrn) == 36  # 18 blocks x 2 convs; the 1x1 shortcuts are not 3x3
    assert (128, 256, 8, 1) in wrn  # the strided conv into the third group
    assert len(gpu.gpu_cases(quick=True)) < 10


def _fake_bench(fn, quick):
    fn()  # the closures must at least run
    return {"median_ms": 2.0, "q20_ms": 1.9, "q80_ms": 2.1}


def test_bench_case_records_unsupported_methods_and_writes_reports(tmp_path):
    case = gpu.GpuCase("linear", 8, 64, 64, 0.5)
    row = gpu.bench_case(case, torch.float32, device="cpu", bench=_fake_bench)
    assert row["timings"]["dense"]["fwd"]["median_ms"] == 2.0
    assert row["speedup_fwd"]["dense"] == pytest.approx(1.0)
    assert row["timings"]["csr"]["fwd_bwd"]["median_ms"] == 2.0  # torch CSR runs on the CPU too
    for m in row["timings"]:
        for phase in gpu.PHASES:
            t = row["timings"][m][phase]
            assert isinstance(t, dict) or t.startswith("unsupported: "), (m, phase, t)
    assert row["rbgp_density"] == pytest.approx(0.5)
    data = {"command": "rbgp bench --device cuda", "dtype": "fp32", "results": [row],
            "environment": {"device_name": "Fake GPU", "torch": torch.__version__, "date": "2025-01-01"}}
    json.dumps(data)  # JSON-safe
    table = gpu.gpu_markdown_table(data)
    assert "| linear 64x64 b8 d=1/2 | fwd |" in table and "Fake GPU" in table
    gpu.plot_gpu(data, tmp_path / "g.png")
    assert (tmp_path / "g.png").stat().st_size > 0


def test_table_with_fake_timings_and_unsupported():
    timings = {"dense": {"fwd": {"median_ms": 4.0, "q20_ms": 3.9, "q80_ms": 4.1},
                         "fwd_bwd": {"median_ms": 12.0, "q20_ms": 11.0, "q80_ms": 13.0}},
               "csr": {p: {"median_ms": 8.0, "q20_ms": 7.0, "q80_ms": 9.0} for p in gpu.PHASES},
               "2:4": {p: "unsupported: RuntimeError: 2:4 needs fp16/bf16" for p in gpu.PHASES},
               "rbgp": {"fwd": {"median_ms": 1.0, "q20_ms": 0.9, "q80_ms": 1.1},
                        "fwd_bwd": {"median_ms": 4.0, "q20_ms": 3.8, "q80_ms": 4.2}}}
    case = gpu.GpuCase("conv", 128 * 64, 64 * 9, 128, 0.1, "vgg19", 128, 8, 2)
    row = gpu.summarize(case, timings, {"rbgp_density": 0.1})
    assert row["speedup_fwd"]["rbgp"] == 4.0 and row["rbgp_vs_fwd_bwd"]["csr"] == 2.0
    assert row["speedup_fwd"]["2:4"] is None
    data = {"command": "c", "dtype": "bf16", "results": [row],
            "environment": {"device_name": "Fake", "torch": "x", "date": "d"}}
    table = gpu.gpu_markdown_table(data)
    line = "| vgg19 conv 64->128 8x8 b128 x2 d=1/10 | fwd | 4.000 | 8.000 | n/a | 1.000 | 4.00x | 8.00x | n/a | 0.40 |"
    assert line in table
    assert "- 2:4 (fwd): RuntimeError: 2:4 needs fp16/bf16" in table


def test_run_gpu_bench_refuses_without_cuda_or_bad_dtype(tmp_path):
    with pytest.raises(ValueError, match="dtype must be one of"):
        gpu.run_gpu_bench(tmp_path, "fp64")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            gpu.run_gpu_bench(tmp_path, "bf16", quick=True)
