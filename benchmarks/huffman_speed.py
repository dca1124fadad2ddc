"""Speed of canonical Huffman coding (rbgp.compress.huffman) on 20 M int8 symbols of bell-shaped weights.

Writes benchmarks/compress/huffman_speed.json and .md. Run: python benchmarks/huffman_speed.py
"""

from __future__ import annotations

import datetime
import platform
import time
from pathlib import Path

import numpy as np
import torch

from rbgp.compress.huffman import CHUNK, decode, encode
from rbgp.files import write_json, write_text

OUT = Path(__file__).parent / "compress"


def _best(fn, reps: int = 3) -> tuple[float, object]:
    times, result = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main() -> None:
    rng = np.random.default_rng(0)
    symbols = np.clip(np.rint(rng.normal(0, 20, 20_000_000)), -127, 127).astype(np.int64) + 128
    t_enc, stream = _best(lambda: encode(symbols, 256), reps=1)
    t_dec, decoded = _best(lambda: decode(stream))
    assert np.array_equal(decoded, symbols)
    coded = len(stream.data)
    data = {"command": "python benchmarks/huffman_speed.py", "date": datetime.date.today().isoformat(),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads", "symbols": int(symbols.size),
            "chunk": CHUNK, "coded_bytes": coded, "bits_per_symbol": 8 * coded / symbols.size,
            "offset_bits_per_symbol": 64 / CHUNK, "encode_s": t_enc, "decode_s": t_dec,
            "decode_mb_per_s": coded / t_dec / 1e6, "decode_msymbols_per_s": symbols.size / t_dec / 1e6}
    write_json(OUT / "huffman_speed.json", data)
    text = (f"Command: `{data['command']}`; {data['machine']}; {data['date']}.\n\n"
            f"{symbols.size / 1e6:.0f} M int8 symbols (normal, std 20) coded in {coded:,} B "
            f"({data['bits_per_symbol']:.2f} bits/symbol, plus {data['offset_bits_per_symbol']:.3f} of chunk offsets): "
            f"encode {t_enc:.2f} s, decode {t_dec:.2f} s = {data['decode_mb_per_s']:.1f} MB/s of coded data, "
            f"{data['decode_msymbols_per_s']:.1f} M symbols/s (best of 3).\n")
    write_text(OUT / "huffman_speed.md", text)
    print(text)


if __name__ == "__main__":
    main()
