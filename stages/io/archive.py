"""Safe extraction of zip and tar archives.

:func:`safe_extract` first checks every member and refuses the whole archive, before writing a byte,
if any member could land outside the destination (absolute or drive-letter paths, ``..``
components, links pointing outside, members under a link) or is a device or FIFO. It then extracts
into a temporary sibling directory and moves the result into the destination only when every member
was read cleanly, so a truncated or corrupt archive leaves the destination as it was.
"""

from __future__ import annotations

import contextlib
import lzma
import os
import posixpath
import re
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from stages.io.http import DownloadError

BLOCK = 1 << 20
JUNK_PREFIXES = ("__MACOSX/",)
# What reading a damaged archive raises (truncated streams, bad CRCs, bad headers). OSError is in the
# list because bz2 and gzip report damaged streams with it; it is only caught around reads, so a
# full disk while writing is not mistaken for a corrupt archive.
_READ_ERRORS = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError)
_DRIVE = re.compile(r"^[A-Za-z]:")


class UnsafeArchive(DownloadError):
    """An archive member would be written outside the destination, or is a device/FIFO."""


class CorruptArchive(DownloadError):
    """An archive is truncated or damaged."""


@dataclass(frozen=True)
class _Member:
    """One archive entry to extract: its safe relative path and what it is."""

    name: str  # the raw member name, for messages
    rel: str  # normalised posix path inside the destination
    kind: str  # "file", "symlink" or "hardlink"
    link: str = ""  # symlink target as stored, or the hardlink's member path (normalised)
    key: Any = field(default=None, compare=False)  # the ZipInfo / TarInfo to read the data from


# --------------------------------------------------------------------------------------------------
# Path checks
# --------------------------------------------------------------------------------------------------


def _unsafe(archive: Path, name: str, why: str) -> UnsafeArchive:
    return UnsafeArchive(
        f"{archive}: refusing to extract member {name!r}: {why}. Nothing was extracted. The archive is "
        f"not what the dataset provides; delete it, download it again, and check its source."
    )


def _corrupt(archive: Path, err: BaseException) -> CorruptArchive:
    return CorruptArchive(
        f"{archive}: the archive is truncated or damaged ({type(err).__name__}: {err}). Nothing was "
        f"extracted. Delete {archive} and run the download again."
    )


def _normalise(archive: Path, name: str) -> str:
    """The member's path relative to the destination, or :class:`UnsafeArchive` if it could escape."""
    path = name.replace("\\", "/")
    if "\0" in path:
        raise _unsafe(archive, name, "the name contains a NUL byte")
    if path.startswith("/") or _DRIVE.match(path):
        raise _unsafe(archive, name, "absolute path")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _unsafe(archive, name, "a `..` path component")
    return "/".join(parts)


def _link_inside(rel: str, target: str) -> bool:
    """Whether a symlink at ``rel`` pointing at ``target`` stays inside the destination."""
    target = target.replace("\\", "/")
    if target.startswith("/") or _DRIVE.match(target):
        return False
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
    return resolved != ".." and not resolved.startswith("../")


def _check_plan(archive: Path, members: list[_Member]) -> None:
    """Cross-member rules: links stay inside, nothing is written through a link member."""
    links = {m.rel for m in members if m.kind != "file"}
    regular: set[str] = set()
    seen: set[str] = set()
    for m in members:
        if m.rel in seen and (m.kind != "file" or m.rel in links):
            raise _unsafe(archive, m.name, "a link member shares its path with another member")
        seen.add(m.rel)
        if m.kind == "symlink" and not _link_inside(m.rel, m.link):
            raise _unsafe(archive, m.name, f"symlink to {m.link!r} points outside the destination")
        if m.kind == "hardlink" and m.link not in regular:
            raise _unsafe(archive, m.name, f"hardlink to {m.link!r}, which is not an earlier file member")
        parents = m.rel.split("/")[:-1]
        for i in range(1, len(parents) + 1):
            if "/".join(parents[:i]) in links:
                raise _unsafe(archive, m.name, "it would be written through a symlink member")
        if m.kind == "file":
            regular.add(m.rel)


def _is_junk(rel: str) -> bool:
    return any((rel + "/").startswith(prefix) for prefix in JUNK_PREFIXES)


# --------------------------------------------------------------------------------------------------
# Zip and tar readers
# --------------------------------------------------------------------------------------------------


def _zip_plan(archive: Path, zf: zipfile.ZipFile) -> list[_Member]:
    plan = []
    for info in zf.infolist():
        rel = _normalise(archive, info.filename)
        mode = info.external_attr >> 16
        if info.is_dir() or stat.S_ISDIR(mode) or not rel or _is_junk(rel):
            continue
        if stat.S_ISLNK(mode):
            target = zf.read(info).decode("utf-8", "surrogateescape")
            plan.append(_Member(info.filename, rel, "symlink", target))
        elif stat.S_IFMT(mode) in (0, stat.S_IFREG):
            plan.append(_Member(info.filename, rel, "file", key=info))
        else:
            raise _unsafe(archive, info.filename, f"special file (mode {oct(stat.S_IFMT(mode))})")
    return plan


def _tar_plan(archive: Path, tf: tarfile.TarFile) -> list[_Member]:
    plan = []
    for info in tf.getmembers():
        rel = _normalise(archive, info.name)
        if info.isdir() or not rel or _is_junk(rel):
            continue
        if info.issym():
            plan.append(_Member(info.name, rel, "symlink", info.linkname))
        elif info.islnk():
            try:
                target = _normalise(archive, info.linkname)
            except UnsafeArchive:
                raise _unsafe(
                    archive, info.name, f"hardlink to {info.linkname!r} outside the destination"
                ) from None
            plan.append(_Member(info.name, rel, "hardlink", target))
        elif info.isreg():
            plan.append(_Member(info.name, rel, "file", key=info))
        elif info.ischr() or info.isblk() or info.isfifo():
            raise _unsafe(archive, info.name, "device or FIFO member")
        else:
            raise _unsafe(archive, info.name, f"unsupported member type {info.type!r}")
    return plan


class _ReadFailed(Exception):
    """Reading the archive failed (unlike a failed write to disk, which is not the archive's fault)."""


@contextlib.contextmanager
def _reading() -> Iterator[None]:
    try:
        yield
    except _READ_ERRORS as err:
        raise _ReadFailed(err) from err


def _copy(src: IO[bytes], dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(dst, "wb") as out:
        while True:
            with _reading():
                block = src.read(BLOCK)
            if not block:
                break
            out.write(block)


class _Reader:
    """An open zip or tar archive: its member plan, and each member's data."""

    def __init__(self, archive: Path, kind: str, stack: contextlib.ExitStack) -> None:
        if kind not in ("zip", "tar"):
            raise ValueError(f"unknown archive kind {kind!r}; expected 'zip' or 'tar'")
        self.kind = kind
        with _reading():
            if kind == "zip":
                self.zf = stack.enter_context(zipfile.ZipFile(archive))
                self.plan = _zip_plan(archive, self.zf)
            else:
                self.tf = stack.enter_context(tarfile.open(archive, "r:*"))  # noqa: SIM115 (the stack closes it)
                self.plan = _tar_plan(archive, self.tf)

    def open(self, member: _Member) -> IO[bytes]:
        with _reading():
            if self.kind == "zip":
                return self.zf.open(member.key)
            fh = self.tf.extractfile(member.key)
            if fh is None:
                raise tarfile.ReadError(f"member {member.name!r} has no data")
            return fh


def _write_member(root: Path, m: _Member, reader: _Reader) -> None:
    target = root / m.rel
    target.parent.mkdir(parents=True, exist_ok=True)
    if m.kind == "symlink":
        os.symlink(m.link, target)
    elif m.kind == "hardlink":
        shutil.copyfile(root / m.link, target)
    else:
        with reader.open(m) as src:
            _copy(src, target)


def _check_links_resolved(archive: Path, root: Path, plan: list[_Member]) -> None:
    """After extraction: every symlink, resolved for real (through other links), stays inside ``root``.

    The lexical check in :func:`_check_plan` cannot see chains such as ``a -> .`` plus ``b -> a/../x``.
    """
    real_root = Path(os.path.realpath(root))
    for m in plan:
        if m.kind == "symlink" and not Path(os.path.realpath(root / m.rel)).is_relative_to(real_root):
            raise _unsafe(archive, m.name, f"symlink to {m.link!r} resolves outside the destination")


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def _move_into(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``, merging directories that already exist there."""
    if src.is_dir() and not src.is_symlink() and dst.is_dir() and not dst.is_symlink():
        for child in src.iterdir():
            _move_into(child, dst / child.name)
        src.rmdir()
        return
    if dst.is_dir() and not dst.is_symlink():
        shutil.rmtree(dst)
    elif dst.exists() or dst.is_symlink():
        dst.unlink()
    os.replace(src, dst)


def safe_extract(archive: Path, dest: Path, kind: str) -> list[str]:
    """Extract a ``zip`` or ``tar`` (plain, gz, bz2 or xz) archive into ``dest``, refusing unsafe members.

    Returns the extracted files' and links' paths relative to ``dest`` (posix, sorted); directory
    entries and ``__MACOSX/`` junk are skipped. Raises :class:`UnsafeArchive` before writing anything,
    or :class:`CorruptArchive`; in both cases ``dest`` is left as it was.
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise DownloadError(f"{archive}: no such archive to extract.")
    staging = dest.parent / f".{dest.name}.extract-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with contextlib.ExitStack() as stack:
            reader = _Reader(archive, kind, stack)
            _check_plan(archive, reader.plan)
            staging.mkdir(parents=True)
            for member in reader.plan:
                _write_member(staging, member, reader)
        _check_links_resolved(archive, staging, reader.plan)
        dest.mkdir(parents=True, exist_ok=True)
        for child in sorted(staging.iterdir()):
            _move_into(child, dest / child.name)
    except _ReadFailed as err:
        raise _corrupt(archive, err.__cause__ or err) from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return sorted(m.rel for m in reader.plan)
