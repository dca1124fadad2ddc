"""Compressed models: canonical Huffman coding of quantised weights (the file format and memory-budgeted
inference build on it)."""
