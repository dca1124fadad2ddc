"""Compressed models: a safetensors file format with a checksum (`save`, `load`), per-row quantisation
and canonical Huffman coding of the quantised weights, and a size report per representation."""

from rbgp.compress.format import CompressedFileError, load, read, save
from rbgp.compress.report import size_report, size_table

__all__ = ["CompressedFileError", "load", "read", "save", "size_report", "size_table"]
