import json

import pytest
import torch

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


def _one_line_error(capsys, argv, expected):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"rbgp {argv[0]}: error: "), err
    assert expected in err[0], err[0]
    return err[0]


def test_user_errors_are_one_line(capsys, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [
        (["pattern", "--out", "64", "--in", "64", "--plot", str(tmp_path)], f"--plot '{tmp_path}' is a folder"),
        (["pattern", "--out", "64", "--in", "64", "--plot", str(a_file / "m.png")], "a_file is a file, so nothing can be written under it"),
        (["pattern", "--out", "64", "--in", "64", "--group-rows", "0"], "group_rows must be >= 1, got 0"),
        (["train", "--out-dir", str(a_file), "--dry-run"], f"--out-dir) '{a_file}' is an existing file"),
        (["train", "--hidden=-4", "--dry-run"], "got [-4]"),
        (["train", "--model", "cnn", "--hidden", "0", "--dry-run"], "got [0]"),
        (["train", "--gamma", "inf", "--dry-run"], "gamma must be a positive number, got inf"),
        (["train", "--group-rows", "0", "--pattern", "block", "--dry-run"], "--group-rows applies to rbgp4 only"),
        (["train", "--resume", "--out-dir", str(tmp_path / "none"), "--dry-run"], "--resume: no checkpoint at"),
        (["train", "--data-dir", str(tmp_path / "none"), "--dry-run"], "is not a folder (no such path)"),
        (["demo", "--out-dir", str(a_file), "--dry-run"], "is an existing file"),
        (["train", "--data-dir", str(tmp_path), "--dry-run"], "Fashion-MNIST file train-images-idx3-ubyte(.gz) not found"),
        (["train", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--dry-run"], "CIFAR data not found in"),
        (["train", "--init-from", str(tmp_path / "none.pt"), "--dry-run"], "none.pt"),
        (["train", "--hidden", "1000000,1000000", "--dry-run"], "needs about 18 TiB of memory"),
        (["infer", str(a_file), "--memory-budget", "inf"], "memory size 'inf' must be a positive size"),
    ]
    for argv, expected in cases:
        _one_line_error(capsys, argv, expected)


def test_memory_error_is_one_line(capsys, monkeypatch):
    import rbgp.tools.describe as describe

    def boom(*a, **k):
        raise MemoryError

    monkeypatch.setattr(describe, "build_and_describe", boom)
    _one_line_error(capsys, ["pattern", "--out", "64", "--in", "64"], "out of memory")


def test_huge_models_are_refused_before_allocating(capsys, monkeypatch):
    monkeypatch.setenv("RBGP_MEMORY_LIMIT", "1G")
    from rbgp.experiments import TrainConfig, train

    with pytest.raises(ValueError, match=r"model 'mlp' with [\d,]+ parameters needs about 18 TiB of memory, more than the 1.0 GiB limit"):
        train(TrainConfig(model="mlp", dataset="synthetic_cifar10", model_kwargs={"hidden": [10**6, 10**6]},
                          limit_train=16, limit_test=16), None, quiet=True)
    monkeypatch.setenv("RBGP_MEMORY_LIMIT", "lots")
    with pytest.raises(ValueError, match="RBGP_MEMORY_LIMIT must be a number of bytes .* got 'lots'"):
        train(TrainConfig(model="mlp", dataset="synthetic_cifar10", limit_train=16, limit_test=16), None, quiet=True)


def test_dry_run_checks_and_runs_nothing(capsys, tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--out-dir", str(out), "--dry-run", "--sparsity", "0.75", "--pattern", "rbgp4"]
    assert main([*argv, "--dataset", "synthetic_cifar10"]) == 0
    text = capsys.readouterr().out
    assert "would run rbgp train (a new run)" in text and '"sparsity": 0.75' in text
    assert not out.exists()


def test_dry_run_refuses_a_cuda_device_on_a_cpu_machine(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    _one_line_error(capsys, ["train", "--device", "cuda", "--dry-run"], "CUDA is not available")


def test_pattern_options_checked_up_front(capsys):
    _one_line_error(capsys, ["train", "--pattern", "rbgp4", "--group-rows", "0", "--dry-run"],
                    "group_rows must be >= 1, got 0")
    _one_line_error(capsys, ["train", "--pattern", "block", "--block", "0", "4", "--dry-run"], "block[0] must be >= 1")


@pytest.mark.parametrize("shape", [("1000000000", "64"), ("64", "1000000000")])
def test_huge_pattern_fails_fast_under_a_memory_limit(shape):
    import resource
    import subprocess
    import sys
    import time

    def limit():  # 2 GB of address space: a large allocation would die, not swap
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "rbgp.cli", "pattern", "--out", shape[0], "--in", shape[1],
                           "--sparsity", "0.5"], capture_output=True, text=True, preexec_fn=limit, timeout=60)
    elapsed = time.perf_counter() - start
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert f"a {shape[0]} x {shape[1]} rbgp4 mask" in lines[0] and "more than the" in lines[0] and "limit" in lines[0]
    assert elapsed < 5, elapsed


def test_empty_integer_lists_are_refused(capsys):
    """`--hidden ,,` once fell back to the default widths without a word."""
    for flag in ("--hidden", "--milestones"):
        with pytest.raises(SystemExit) as stop:
            main(["train", flag, ",,", "--dry-run"])
        assert stop.value.code == 2
        assert f"argument {flag}: expected at least one integer, got ',,'" in capsys.readouterr().err
