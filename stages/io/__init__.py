"""Shared I/O helpers: atomic writes, hashing, HTTP fetching, archive extraction, rasters, logging."""
