"""Canonical Huffman coding of small-alphabet symbols (quantised weights), vectorised with numpy.

Deep Compression codes quantised weights with Huffman codes; here the code is canonical (the file
stores only each symbol's code length), at most `MAX_CODE_LENGTH` bits long, and the stream carries a
sync point every `CHUNK` symbols (its bit offset), so decoding runs over all chunks at once: each
numpy step reads a `MAX_CODE_LENGTH`-bit window per chunk and looks symbol and length up in one table.
No Python loop runs per bit or per symbol.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

__all__ = ["CHUNK", "MAX_CODE_LENGTH", "HuffmanStream", "code_lengths", "decode", "encode"]

MAX_CODE_LENGTH = 16
CHUNK = 512


def code_lengths(counts: np.ndarray, limit: int = MAX_CODE_LENGTH) -> np.ndarray:
    """Huffman code lengths (0 for unused symbols), none longer than `limit`.

    Plain Huffman on the counts, then, if a code is too long, the usual length-limiting repair
    (as in zlib): clamp to `limit` and lengthen the longest codes under it until Kraft's sum is 1.
    """
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 1 or (counts < 0).any():
        raise ValueError(f"counts must be a 1-D array of non-negative integers, got shape {counts.shape}")
    used = np.flatnonzero(counts)
    lengths = np.zeros(counts.size, dtype=np.int64)
    if used.size == 0:
        return lengths
    if used.size == 1:
        lengths[used] = 1
        return lengths
    if used.size > 2**limit:
        raise ValueError(f"{used.size} symbols cannot have codes of at most {limit} bits")
    heap = [(int(counts[s]), i, [int(s)]) for i, s in enumerate(used)]
    heapq.heapify(heap)
    tie = len(heap)
    while len(heap) > 1:
        c1, _, s1 = heapq.heappop(heap)
        c2, _, s2 = heapq.heappop(heap)
        for s in s1 + s2:
            lengths[s] += 1
        heapq.heappush(heap, (c1 + c2, tie, s1 + s2))
        tie += 1
    if lengths.max() > limit:
        _limit_lengths(lengths, used, counts, limit)
    return lengths


def _limit_lengths(lengths: np.ndarray, used: np.ndarray, counts: np.ndarray, limit: int) -> None:
    """Clamp code lengths to `limit` and restore Kraft's equality by lengthening frequent-enough codes."""
    lengths[used] = np.minimum(lengths[used], limit)
    kraft = sum(2 ** (limit - int(lengths[s])) for s in used)
    order = sorted(used, key=lambda s: (counts[s], -lengths[s]))  # rarest first
    while kraft > 2**limit:  # lengthen the rarest code that is shorter than the limit
        s = next(s for s in order if lengths[s] < limit)
        kraft -= 2 ** (limit - int(lengths[s]) - 1)
        lengths[s] += 1
    for s in sorted(used, key=lambda s: -counts[s]):  # spend any slack on the most frequent
        while lengths[s] > 1 and kraft + 2 ** (limit - int(lengths[s])) <= 2**limit:
            kraft += 2 ** (limit - int(lengths[s]))
            lengths[s] -= 1


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """The canonical code of each symbol (by length, then symbol), as integers; 0 for unused symbols."""
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = np.zeros(lengths.size, dtype=np.int64)
    code, prev = 0, 0
    for s in sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[s]) - prev
        codes[s] = code
        prev = int(lengths[s])
        code += 1
    return codes


@dataclass(frozen=True)
class HuffmanStream:
    """A coded stream: code lengths per symbol, the bits, the symbol count and each chunk's bit offset."""

    lengths: np.ndarray  # (alphabet,) uint8
    data: bytes
    count: int
    offsets: np.ndarray  # (ceil(count / CHUNK),) int64 bit offsets


def encode(symbols: np.ndarray, alphabet: int, lengths: np.ndarray | None = None) -> HuffmanStream:
    """Code `symbols` (integers in [0, alphabet)) with a canonical Huffman code of their histogram."""
    symbols = np.asarray(symbols).reshape(-1)
    if symbols.size and (symbols.min() < 0 or symbols.max() >= alphabet):
        raise ValueError(f"symbols must lie in [0, {alphabet}), got [{symbols.min()}, {symbols.max()}]")
    symbols = symbols.astype(np.int64)
    if lengths is None:
        lengths = code_lengths(np.bincount(symbols, minlength=alphabet))
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = canonical_codes(lengths)
    sym_len = lengths[symbols]
    ends = np.cumsum(sym_len)
    starts = ends - sym_len
    total = int(ends[-1]) if symbols.size else 0
    bits = np.zeros(total + MAX_CODE_LENGTH, dtype=np.uint8)
    for b in range(MAX_CODE_LENGTH):  # bit b of each code (from its most significant), where it exists
        has = sym_len > b
        bits[starts[has] + b] = (codes[symbols[has]] >> (sym_len[has] - 1 - b)) & 1
    data = np.packbits(bits[:total]).tobytes()
    return HuffmanStream(lengths.astype(np.uint8), data, int(symbols.size), starts[::CHUNK].astype(np.int64))


def _decode_table(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(symbol, length) for every MAX_CODE_LENGTH-bit window, indexed by the window's value."""
    codes = canonical_codes(lengths)
    table_sym = np.zeros(2**MAX_CODE_LENGTH, dtype=np.int64)
    table_len = np.zeros(2**MAX_CODE_LENGTH, dtype=np.int64)  # 0: no code starts this way
    for s in np.flatnonzero(lengths):
        shift = MAX_CODE_LENGTH - int(lengths[s])
        lo = int(codes[s]) << shift
        table_sym[lo : lo + (1 << shift)] = s
        table_len[lo : lo + (1 << shift)] = lengths[s]
    return table_sym, table_len


def decode(stream: HuffmanStream) -> np.ndarray:
    """The symbols of `stream` (uint8 for alphabets up to 256, else int32); ValueError if the stream is
    inconsistent (a corrupt file), before allocating more than a few bytes per coded bit."""
    lengths = np.asarray(stream.lengths, dtype=np.int64)
    n, nbits = int(stream.count), len(stream.data) * 8
    n_chunks = -(-n // CHUNK) if n > 0 else 0
    offsets = np.asarray(stream.offsets, dtype=np.int64)
    if n < 0 or n > nbits or offsets.shape != (n_chunks,):
        raise ValueError(f"corrupt Huffman stream: {n} symbols, {offsets.size} chunk offsets, {nbits} bits")
    if n == 0:
        return np.zeros(0, dtype=np.uint8)
    if lengths.ndim != 1 or lengths.max() > MAX_CODE_LENGTH or lengths.min() < 0 or not lengths.any():
        raise ValueError("corrupt Huffman stream: invalid code lengths")
    if np.sum(np.where(lengths > 0, 2.0 ** -lengths.astype(float), 0.0)) > 1.0 + 1e-12:
        raise ValueError("corrupt Huffman stream: code lengths violate Kraft's inequality")
    if offsets[0] != 0 or (np.diff(offsets) < 1).any() or offsets[-1] >= nbits:
        raise ValueError("corrupt Huffman stream: chunk offsets out of order or out of range")
    dtype = np.uint8 if lengths.size <= 256 else np.int32
    table_sym, table_len = _decode_table(lengths)
    table_sym = table_sym.astype(dtype)
    padded = np.concatenate([np.frombuffer(stream.data, dtype=np.uint8), np.zeros(3, dtype=np.uint8)]).astype(np.int64)
    last_byte = padded.size - 3
    out = np.zeros((n_chunks, CHUNK), dtype=dtype)
    pos = offsets.copy()
    last_count = n - (n_chunks - 1) * CHUNK
    last_end = -1
    invalid = False
    for step in range(CHUNK if n_chunks > 1 else n):
        byte = np.minimum(pos >> 3, last_byte)
        window = (padded[byte] << 16 | padded[byte + 1] << 8 | padded[byte + 2]) << (pos & 7)
        window = (window >> (24 - MAX_CODE_LENGTH)) & (2**MAX_CODE_LENGTH - 1)
        length = table_len[window]
        out[:, step] = table_sym[window]
        live = length[:-1] if step >= last_count else length
        invalid |= bool((live == 0).any())
        pos += length
        if step == last_count - 1:
            last_end = int(pos[-1])
    # each chunk must end exactly where the next begins, and the last in the final byte
    if invalid or not np.array_equal(pos[:-1], offsets[1:]) or not nbits - 8 < last_end <= nbits:
        raise ValueError("corrupt Huffman stream: the codes do not line up with the chunk offsets")
    return out.reshape(-1)[:n]
