"""User-facing helpers on top of the library: descriptions and plots."""
