"""Pack a twin's generated files into the archives its real dataset is distributed as."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from stages.config import DatasetSpec
from stages.io.hashing import sha256_file

# A fixed member timestamp keeps the archives byte-identical from run to run.
_ZIP_DATE = (2013, 3, 26, 10, 43, 8)
# The generator's whole-scene diagnostics: never packed, moved aside by the twin stage.
TRUTH = "_truth.npz"


def _all_files(files_dir: Path) -> list[str]:
    """Every file under ``files_dir`` except the diagnostics, as sorted POSIX paths."""
    rels = (p.relative_to(files_dir).as_posix() for p in files_dir.rglob("*") if p.is_file())
    return sorted(r for r in rels if r != TRUTH)


def pack(spec: DatasetSpec, files_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Write each archive listed in ``source.archives`` from ``files_dir`` into ``out_dir``.

    A zip gets the listed ``contents`` members the generator produced (the real archives also hold
    files no reader uses, e.g. binary ``.roi``; a twin omits those). A zip without a ``contents`` list
    (e.g. thousands of tiles) gets every file the generator wrote except ``_truth.npz``, in sorted
    order. A plain file is moved as is.
    Returns the twin manifest: the sha256 of every archive and of every member, which the download
    stage verifies instead of the real dataset's checksums.
    """
    archives = spec.source.get("archives")
    if not archives:
        raise ValueError(f"{spec.path}: source.archives must name the real archives for a twin to imitate.")
    manifest: dict[str, Any] = {"archives": {}, "contents": {}}
    for archive in archives:
        name = archive["file"]
        target = out_dir / name
        if archive.get("unpack") == "zip":
            if "contents" in archive:
                members = [m for m in archive["contents"] if (files_dir / m).is_file()]
            else:
                members = _all_files(files_dir)
            if not members:
                raise ValueError(f"{spec.path}: the twin produced none of the members of {name}.")
            with zipfile.ZipFile(target, "w") as zf:
                for member in members:
                    info = zipfile.ZipInfo(member, date_time=_ZIP_DATE)
                    info.compress_type = zipfile.ZIP_DEFLATED
                    info.external_attr = 0o644 << 16
                    with open(files_dir / member, "rb") as src, zf.open(info, "w") as dst:
                        while block := src.read(1 << 20):
                            dst.write(block)
            manifest["contents"][name] = {m: sha256_file(files_dir / m) for m in members}
        elif archive.get("unpack"):
            raise ValueError(f"{spec.path}: twins can pack zip archives, not {archive['unpack']!r} ({name}).")
        else:
            if not (files_dir / name).is_file():
                raise ValueError(f"{spec.path}: the twin did not produce {name}.")
            (files_dir / name).replace(target)
        manifest["archives"][name] = sha256_file(target)
    return manifest
