"""Interleaved timing: every function runs once per repeat, in turn."""

from rbgp.experiments.bench.timing import time_interleaved


def test_functions_alternate_within_each_repeat():
    calls = []
    out = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=4, warmup=1)
    assert calls == ["a", "b"] * 5
    assert set(out) == {"a", "b"}
    assert all(out[k]["repeats"] == 4 and 0 <= out[k]["q20_ms"] <= out[k]["median_ms"] <= out[k]["q80_ms"]
               for k in out)
