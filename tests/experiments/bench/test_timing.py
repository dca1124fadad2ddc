"""Interleaved timing: every function runs once per repeat, in turn."""

import torch

from rbgp.experiments.bench.timing import time_interleaved


def test_functions_alternate_within_each_repeat():
    calls = []
    out = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=4, warmup=1)
    assert calls == ["a", "b"] * 5
    assert set(out) == {"a", "b"}
    assert all(out[k]["repeats"] == 4 and 0 <= out[k]["q20_ms"] <= out[k]["median_ms"] <= out[k]["q80_ms"]
               for k in out)


def test_the_machine_record_names_the_cpu_its_family_and_vector_width(monkeypatch, tmp_path):
    from rbgp.experiments.bench import timing

    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nmodel name\t: AMD EPYC\ncpu family\t: 25\nmodel\t\t: 17\nflags\t\t: fpu avx2 avx512f\n\n"
        "processor\t: 1\nmodel name\t: other\n"
    )
    monkeypatch.setattr(timing, "Path", lambda _: info)
    assert timing.cpu_name() == "AMD EPYC (family 25, model 17), AVX-512"
    info.write_text("model name\t: Some CPU\nflags\t\t: sse avx2\n")
    assert timing.cpu_name() == "Some CPU, AVX2"
    assert timing.machine().startswith("Some CPU, AVX2, ") and torch.__version__ in timing.machine()
    monkeypatch.setattr(timing, "Path", lambda _: tmp_path / "missing")
    assert timing.cpu_name()  # no /proc/cpuinfo: the platform's name, never an error
