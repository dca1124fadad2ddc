"""Compressed-file fixtures: files as someone would craft them."""

from __future__ import annotations

import json

import pytest


@pytest.fixture()
def craft():
    """craft(src, dst, change): `src`'s header and tensors passed to change(header, tensors), written to
    `dst` with the checksum recomputed (which anyone can do: a checksum is no defence)."""
    from safetensors.torch import save as st_save

    from rbgp.compress.format import _checksum, read

    def run(src, dst, change) -> None:
        header, tensors = read(src)
        change(header, tensors)
        header["checksum"] = _checksum(header, tensors)
        dst.write_bytes(st_save(tensors, metadata={"rbgp": json.dumps(header, sort_keys=True)}))

    return run
