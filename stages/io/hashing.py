"""SHA-256 of files and directory trees, streamed in blocks."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

BLOCK = 1 << 20


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def tree_files(root: str | os.PathLike[str], exclude: tuple[str, ...] = ()) -> list[Path]:
    """Regular files under ``root`` in a stable order, skipping top-level names in ``exclude``."""
    root = Path(root)
    if root.is_file():
        return [root]
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        if rel == Path("."):
            dirnames[:] = [d for d in dirnames if d not in exclude]
            filenames = [f for f in filenames if f not in exclude]
        dirnames.sort()
        files.extend(Path(dirpath) / f for f in sorted(filenames))
    return files


def sha256_tree(root: str | os.PathLike[str], exclude: tuple[str, ...] = ()) -> tuple[str, dict[str, str]]:
    """The digest of a directory (over relative paths and file digests) and each file's digest."""
    root = Path(root)
    per_file = {
        (p.relative_to(root).as_posix() if root.is_dir() else p.name): sha256_file(p)
        for p in tree_files(root, exclude)
    }
    digest = hashlib.sha256()
    for rel, sha in sorted(per_file.items()):
        digest.update(f"{rel}\0{sha}\n".encode())
    return digest.hexdigest(), per_file
