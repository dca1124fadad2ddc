"""The memory limit every request is checked against (`rbgp.resources`)."""

import pytest

from rbgp import resources as limits


@pytest.mark.parametrize("text, expected", [
    ("1000", 1000), ("2G", 2 << 30), ("2g", 2 << 30), ("512M", 512 << 20), ("1.5GiB", 3 << 29),
    ("64 KB", 64 << 10), ("1T", 1 << 40), (" 3 ", 3), ("1e9", 10**9), ("2gb", 2 << 30), ("5b", 5),
    ("unlimited", None),
])
def test_parse_size(text, expected):
    assert limits.parse_size(text) == expected


@pytest.mark.parametrize("text", ["abc", "-1", "2X", "G", "0", "1e", "", "2 G B"])
def test_parse_size_rejects_bad_values(text):
    with pytest.raises(ValueError, match="RBGP_MEMORY_LIMIT"):
        limits.parse_size(text)


def test_limit_from_environment(monkeypatch):
    monkeypatch.setenv("RBGP_MEMORY_LIMIT", "2G")
    assert limits.memory_limit() == (2 << 30, "set by RBGP_MEMORY_LIMIT=2G")
    monkeypatch.setenv("RBGP_MEMORY_LIMIT", "lots")
    with pytest.raises(ValueError, match=r"RBGP_MEMORY_LIMIT must be .*got 'lots'"):
        limits.check_memory(1, "a request")
    monkeypatch.delenv("RBGP_MEMORY_LIMIT")
    limit, source = limits.memory_limit()
    assert limit is None or 0 < limit <= limits.available_memory()
    assert "half the memory available" in source and "RBGP_MEMORY_LIMIT" in source


def test_format():
    assert limits.format_bytes(512) == "512 B"
    assert limits.format_bytes(1536) == "1.5 KiB"
    assert limits.format_bytes(66e9) == "61 GiB"
    assert limits.format_seconds(0.2) == "under a second" and limits.format_seconds(7200) == "2 hours"


def test_check_memory(monkeypatch):
    monkeypatch.setenv("RBGP_MEMORY_LIMIT", "1M")
    limits.check_memory(1000, "a request")
    with pytest.raises(limits.ResourceError, match=r"^a batch needs about 2.0 MiB of memory, "
                                                    r"more than the 1.0 MiB limit \(set by RBGP_MEMORY_LIMIT=1M\)$"):
        limits.check_memory(2 << 20, "a batch")
    monkeypatch.setenv("RBGP_MEMORY_LIMIT", "unlimited")
    limits.check_memory(1e30, "anything")
