"""Deterministic synthetic twins of the real datasets, packaged like the real distributions."""
