"""The ``download`` stage: fetch a dataset's archives, verify them and unpack them into ``data/raw/<name>``.

What to fetch comes from ``source:`` in ``params/datasets/<name>.yaml``:

* ``kind: http`` — each entry of ``source.archives`` is downloaded from its ``urls`` (mirrors, in
  order) and checked against its ``sha256``.
* ``kind: twin`` — the twin stage wrote the archives and ``twin-manifest.json`` into ``--twin-dir``;
  they are served on a loopback HTTP server and fetched exactly like real data (streaming, resume,
  checksums). Checksums come only from the manifest, never from the real dataset's params entry.
* ``kind: manual`` — nothing is downloaded; the user places each file in ``<out>/archives/`` (or
  ``<out>/``) and this stage verifies and unpacks it, or explains where to put what.
* ``kind: custom`` — your own data ("bring your own data"): every modality's and label file's ``path:``
  is checked (exists, readable, band count, and for arrays without georeferencing the shape of the
  reference grid), then *copied* into ``<out>/`` under a stable name (``<modality>.<ext>``,
  ``labels_train.<ext>``, ``labels_test.<ext>``) with its sha256 in the receipt. A copy, not a link:
  a later edit of the original cannot silently change what the results were computed from (Snakemake
  sees the edit through the rule's inputs and reruns the stage).

Each archive with ``unpack: zip|tar`` is extracted safely into ``<out>/``; any other file is placed at
``<out>/<file>``. Every path listed under ``contents`` is then checked against its sha256 (a member
listed with ``null`` must be there; its checksum is unknown).

Download cache: archives are fetched into ``<out.parent>/.cache/<out.name>/`` (for example
``data/raw/.cache/houston2013/``), outside ``out``, so a failed or interrupted run keeps what it
already downloaded: the rerun resumes a ``.part`` file and reuses verified archives without a request.
``out`` itself is built in a temporary sibling (archives hard-linked in, or copied across file
systems, then unpacked and verified) and swapped in only when everything succeeded, so a failure
never leaves a partial ``out``. The receipt ``<out>/download.json`` records, without timestamps, each
archive's file, source URL, sha256 and size and the sha256 of every unpacked file, so reruns write a
byte-identical receipt.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

from stages.config import DatasetSpec, ParamsError, load_dataset
from stages.datasets.twins.serve import serve_directory
from stages.io.archive import safe_extract
from stages.io.atomic import atomic_dir, write_json, write_text
from stages.io.hashing import sha256_file, sha256_tree
from stages.io.http import (
    ChecksumMismatch,
    DownloadError,
    HtmlInsteadOfData,
    fetch_from_mirrors,
    looks_like_html,
)
from stages.io.logs import setup_logging

log = logging.getLogger("landfuse.download")

ARCHIVES = "archives"
RECEIPT = "download.json"
TWIN_MANIFEST = "twin-manifest.json"
RESERVED = (ARCHIVES, RECEIPT)


class LocalDataError(DownloadError):
    """A ``kind: custom`` file is missing, unreadable or not on the reference grid; the message says which."""


class ManualDownloadRequired(DownloadError):
    """A ``kind: manual`` dataset's files are not in place yet; the message says where to put them."""


@dataclass(frozen=True)
class Entry:
    """One file of ``source.archives``, with the checksums that apply to this run."""

    file: str
    urls: tuple[str, ...]
    sha256: str | None
    unpack: str | None
    contents: dict[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Fetched:
    """An entry's verified file and where it came from (as recorded in the receipt)."""

    entry: Entry
    path: Path
    url: str


def cache_dir(out: Path) -> Path:
    """The download cache, which survives failed attempts: ``<out.parent>/.cache/<out.name>``."""
    return out.parent / ".cache" / out.name


# --------------------------------------------------------------------------------------------------
# Which files, with which checksums
# --------------------------------------------------------------------------------------------------


def _archives(spec: DatasetSpec) -> list[dict[str, Any]]:
    archives = spec.source.get("archives") or []
    if not archives:
        raise DownloadError(f"{spec.path}: `source.archives` is empty; list the files to download.")
    for a in archives:
        name = a["file"]
        if "/" in name or "\\" in name or name in ("", ".", "..") or name in RESERVED:
            raise ParamsError(f"{spec.path}: source.archives file {name!r} must be a plain file name.")
    return archives


def params_entries(spec: DatasetSpec) -> list[Entry]:
    """Entries with the URLs and checksums of the params file (``http`` and ``manual`` sources)."""
    return [
        Entry(
            a["file"], tuple(a.get("urls", ())), a.get("sha256"), a.get("unpack"), dict(a.get("contents", {}))
        )
        for a in _archives(spec)
    ]


def read_twin_manifest(twin_dir: Path) -> dict[str, Any]:
    path = twin_dir / TWIN_MANIFEST
    if not path.is_file():
        raise DownloadError(
            f"{path}: no twin manifest. Generate the twin first (the `twin` stage writes its archives "
            f"and {TWIN_MANIFEST} into {twin_dir})."
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DownloadError(f"{path}: not valid JSON ({err}); regenerate the twin.") from err
    if not isinstance(manifest, dict) or not isinstance(manifest.get("archives"), dict):
        raise DownloadError(f"{path}: expected an object with an `archives` mapping; regenerate the twin.")
    return manifest


def twin_entries(spec: DatasetSpec, twin_dir: Path) -> list[Entry]:
    """Entries for a twin: names and unpack kinds from params, checksums only from the twin manifest."""
    manifest = read_twin_manifest(twin_dir)
    contents = manifest.get("contents") or {}
    entries = []
    for a in _archives(spec):
        name = a["file"]
        if name not in manifest["archives"]:
            raise DownloadError(
                f"{twin_dir / TWIN_MANIFEST}: lists no archive {name!r}, which {spec.path} expects. "
                f"The twin is stale or incomplete; regenerate it."
            )
        entries.append(
            Entry(name, (), manifest["archives"][name], a.get("unpack"), dict(contents.get(name, {})))
        )
    return entries


# --------------------------------------------------------------------------------------------------
# Getting the files
# --------------------------------------------------------------------------------------------------


def _url_note(cache: Path, name: str) -> Path:
    return cache / f"{name}.url"


def fetch_http(entries: list[Entry], cache: Path, spec: DatasetSpec, **fetch_kw: Any) -> list[Fetched]:
    """Download every entry from its mirrors into ``cache`` (reusing verified files there)."""
    out = []
    with requests.Session() as session:
        for e in entries:
            if not e.urls:
                raise DownloadError(f"{spec.path}: source.archives entry {e.file!r} has no `urls:`.")
            path, url = fetch_from_mirrors(
                list(e.urls), cache / e.file, e.sha256, session=session, **fetch_kw
            )
            note = _url_note(cache, e.file)
            if url is not None:
                write_text(note, url + "\n")
            # A reused file came from the mirror noted when it was downloaded.
            used = url or (note.read_text().strip() if note.is_file() else e.urls[0])
            out.append(Fetched(e, path, used))
    return out


def fetch_twin(entries: list[Entry], cache: Path, twin_dir: Path, **fetch_kw: Any) -> list[Fetched]:
    """Serve ``twin_dir`` on loopback and download every entry through the real HTTP path."""
    out = []
    with serve_directory(twin_dir) as base, requests.Session() as session:
        for e in entries:
            url = f"{base}/{quote(e.file)}"
            path, _ = fetch_from_mirrors([url], cache / e.file, e.sha256, session=session, **fetch_kw)
            # The port is ephemeral; the receipt names the twin file so that it stays deterministic.
            out.append(Fetched(e, path, f"twin:{e.file}"))
    return out


def _manual_message(spec: DatasetSpec, missing: list[Entry], out: Path) -> str:
    lines = [f"{spec.name}: this dataset is not downloaded automatically (source.kind: manual)."]
    if spec.source.get("instructions"):
        lines += ["", spec.source["instructions"].strip()]
    if spec.raw.get("homepage"):
        lines += ["", f"Homepage: {spec.raw['homepage']}"]
    lines += ["", "Place these files, then run the download stage again:"]
    lines += [f"  {e.file}  ->  {out / ARCHIVES / e.file}" for e in missing]
    urls = [u for e in missing for u in e.urls]
    if urls:
        lines += ["", "Known sources:"] + [f"  {u}" for u in urls]
    return "\n".join(lines)


def locate_manual(spec: DatasetSpec, entries: list[Entry], out: Path) -> list[Fetched]:
    """Find and verify user-placed files in ``<out>/archives/`` or ``<out>/``."""
    found, missing = [], []
    for e in entries:
        path = next((p for p in (out / ARCHIVES / e.file, out / e.file) if p.is_file()), None)
        if path is None:
            missing.append(e)
        else:
            _verify_manual(spec, e, path)
            found.append(Fetched(e, path, f"manual:{e.file}"))
    if missing:
        raise ManualDownloadRequired(_manual_message(spec, missing, out))
    return found


def _verify_manual(spec: DatasetSpec, e: Entry, path: Path) -> None:
    if path.suffix.lower() not in (".html", ".htm") and looks_like_html(path):
        raise HtmlInsteadOfData(
            f"{path} is an HTML page, not {e.file}: the browser saved a login, cookie-consent or "
            f"Google-Drive confirmation page instead of the data. Delete it, download the file again in a "
            f"browser (confirm any prompt until the real download starts) and place it at {path}."
        )
    if e.sha256:
        actual = sha256_file(path)
        if actual != e.sha256:
            raise ChecksumMismatch(
                f"{path} has sha256 {actual}, expected {e.sha256} ({spec.path}). It is a different or "
                f"incomplete file: download {e.file} again and replace it, or fix the sha256 in the params "
                f"file if the provider published a new version."
            )


# --------------------------------------------------------------------------------------------------
# Building out
# --------------------------------------------------------------------------------------------------


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (no extra disk space), copying where links are not possible."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _place(item: Fetched, root: Path) -> None:
    """Put one verified file into the tree being built: always under archives/, then unpacked or as is."""
    archived = root / ARCHIVES / item.entry.file
    _link_or_copy(item.path, archived)
    if not item.entry.unpack:
        _link_or_copy(item.path, root / item.entry.file)
        return
    members = safe_extract(archived, root, item.entry.unpack)
    clash = sorted({m.split("/")[0] for m in members} & set(RESERVED))
    if clash:
        raise DownloadError(
            f"{item.path}: members named {clash} would clash with the stage's own {RESERVED}."
        )


def _check_contents(item: Fetched, files: dict[str, str], hint: str) -> None:
    for rel, expected in sorted(item.entry.contents.items()):
        actual = files.get(rel)
        if actual is not None and expected in (None, actual):
            continue
        what = "is missing" if actual is None else f"has sha256 {actual}, expected {expected}"
        raise ChecksumMismatch(
            f"{item.entry.file}: member {rel} {what}, although the archive itself matched its checksum "
            f"({item.url}). {hint}"
        )


def _contents_hint(spec: DatasetSpec) -> str:
    if spec.is_twin:
        return "The twin manifest and its archives disagree: regenerate the twin."
    return f"The `contents:` list in {spec.path} is probably wrong, or the provider changed the archive."


def build(spec: DatasetSpec, out: Path, fetched: list[Fetched]) -> dict[str, Any]:
    """Build ``out`` atomically from verified files and return the receipt written into it."""
    with atomic_dir(out) as tmp:
        for item in fetched:
            _place(item, tmp)
        _, files = sha256_tree(tmp, exclude=RESERVED)
        for item in fetched:
            _check_contents(item, files, _contents_hint(spec))
        receipt = {
            "dataset": spec.name,
            "source": spec.source["kind"],
            "archives": [
                {
                    "file": item.entry.file,
                    "url": item.url,
                    "sha256": item.entry.sha256 or sha256_file(item.path),
                    "size": item.path.stat().st_size,
                }
                for item in fetched
            ],
            "files": files,
        }
        write_json(tmp / RECEIPT, receipt)
    return receipt


def download_dataset(
    spec: DatasetSpec, out: Path, twin_dir: Path | None = None, **fetch_kw: Any
) -> dict[str, Any]:
    """Fetch, verify and unpack ``spec``'s source files into ``out``; return the receipt.

    ``fetch_kw`` (``retries``, ``backoff``, ``timeout``) is passed to :func:`stages.io.http.fetch`.
    Raises :class:`DownloadError` or one of its subclasses (:class:`ManualDownloadRequired`,
    ``ChecksumMismatch``, ``HtmlInsteadOfData``, ``UnsafeArchive``, ``CorruptArchive``); ``out`` is then
    left as it was.
    """
    out = Path(out)
    kind = spec.source["kind"]
    fetchers: dict[str, Callable[[], list[Fetched]]] = {
        "http": lambda: fetch_http(params_entries(spec), cache_dir(out), spec, **fetch_kw),
        "twin": lambda: _fetch_twin_checked(spec, out, twin_dir, **fetch_kw),
        "manual": lambda: locate_manual(spec, params_entries(spec), out),
    }
    if kind == "custom":
        log.info("%s: source kind custom -> %s", spec.name, out)
        return build_custom(spec, out)
    if kind not in fetchers:
        raise ParamsError(f"{spec.path}: unknown source.kind {kind!r}.")
    log.info("%s: source kind %s -> %s", spec.name, kind, out)
    receipt = build(spec, out, fetchers[kind]())
    log.info(
        "%s: %d archive(s), %d file(s) in %s", spec.name, len(receipt["archives"]), len(receipt["files"]), out
    )
    return receipt


def _fetch_twin_checked(
    spec: DatasetSpec, out: Path, twin_dir: Path | None, **fetch_kw: Any
) -> list[Fetched]:
    if twin_dir is None:
        raise DownloadError(
            f"{spec.name} is a synthetic twin (source.kind: twin): pass --twin-dir, the directory the twin "
            f"stage generated (for example data/twins/{spec.name})."
        )
    twin_dir = Path(twin_dir)
    return fetch_twin(twin_entries(spec, twin_dir), cache_dir(out), twin_dir, **fetch_kw)


# --------------------------------------------------------------------------------------------------
# Your own data (source.kind: custom)
# --------------------------------------------------------------------------------------------------


def _display(path: Path) -> str:
    """A source path for the receipt: relative to the project root where it lies inside it."""
    from stages.paths import project_root

    try:
        return str(path.resolve().relative_to(project_root()))
    except ValueError:
        return str(path)


def _readable(spec: DatasetSpec, name: str, path: Path) -> None:
    if not path.is_file():
        hint = (
            "ENVI data needs its .hdr header beside it (same name with .hdr, or with .hdr appended)"
            if name.endswith(".hdr")
            else "check the `path:` (absolute, or relative to the project root)"
        )
        raise LocalDataError(
            f"{path}: no such file (wanted as {name} for {spec.name}); {hint} in {spec.path}."
        )
    try:
        with path.open("rb") as fh:
            fh.read(1)
    except OSError as err:
        raise LocalDataError(f"{path}: cannot be read ({err.strerror}); fix its permissions.") from err


def _probe(spec: DatasetSpec, name: str, path: Path) -> tuple[tuple[int, int], Any]:
    """``(height, width)`` and the transform (None without georeferencing) of one modality's source."""
    from dataclasses import replace

    from stages.datasets.readers import SourceError, open_modality

    modality = spec.modalities[name]
    if modality.format == "envi" and path.suffix.lower() == ".hdr":
        raise LocalDataError(
            f"{path}: modalities.{name}.path names the ENVI header; give the data file beside it instead."
        )
    try:
        with open_modality(path.parent, replace(modality, file=path.name)) as ds:
            georef = not ds.transform.is_identity and modality.format in ("geotiff", "envi", "pcidsk")
            return (ds.height, ds.width), (ds.transform if georef else None)
    except SourceError as err:
        raise LocalDataError(f"{err} (modalities.{name} in {spec.path})") from err


def _label_shape(spec: DatasetSpec, split: str, path: Path) -> tuple[tuple[int, int], Any]:
    import rasterio

    from stages.datasets.readers import SourceError, read_mat, read_npy

    fmt = spec.labels["format"]
    try:
        if fmt == "geotiff":
            try:
                with rasterio.open(path) as ds:
                    georef = not ds.transform.is_identity
                    return (ds.height, ds.width), (ds.transform if georef else None)
            except rasterio.errors.RasterioIOError as err:
                raise LocalDataError(
                    f"{path}: the {split} labels are not a readable GeoTIFF ({err})."
                ) from err
        array = read_npy(path) if fmt == "npy" else read_mat(path, spec.labels.get("key", split))
    except SourceError as err:
        raise LocalDataError(str(err)) from err
    if array.ndim != 2:
        raise LocalDataError(
            f"{path}: the {split} labels have shape {array.shape}; expected one H x W array of class ids."
        )
    return (int(array.shape[0]), int(array.shape[1])), None


def _where(transform: Any) -> str:
    if transform is None:
        return "no georeferencing"
    return f"origin ({transform.c:g}, {transform.f:g}), pixel {transform.a:g} x {transform.e:g}"


def check_custom(spec: DatasetSpec) -> tuple[int, int]:
    """Check every custom file before anything is written; return the reference grid's shape.

    Arrays without georeferencing (.npy, .mat, and labels) cannot be resampled: they must already have
    the reference modality's height and width.
    """
    for name, src in spec.custom_sources.items():
        _readable(spec, name, src)
    sources = spec.custom_sources
    mods = spec.modalities
    ref = spec.reference_modality
    ref_shape, ref_transform = _probe(spec, ref, sources[mods[ref].file])
    declared = spec.declared_shape
    if declared is not None and declared != ref_shape:
        raise LocalDataError(
            f"{sources[mods[ref].file]}: the reference modality `{ref}` is {ref_shape[0]} x {ref_shape[1]} "
            f"but {spec.path} declares grid {declared[0]} x {declared[1]}; fix or delete grid.height/width."
        )
    fix = (
        f"Resample it onto the grid of `{ref}` ({ref_shape[0]} x {ref_shape[1]}) first, or give it as a "
        "georeferenced GeoTIFF so the coregister stage can warp it."
    )
    for name, m in mods.items():
        if name == ref:
            continue
        shape, transform = _probe(spec, name, sources[m.file])
        if ref_transform is None and shape != ref_shape:
            raise LocalDataError(
                f"{sources[m.file]}: modality `{name}` is {shape[0]} x {shape[1]}, but the reference `{ref}` "
                f"({sources[mods[ref].file]}) has no georeferencing, so nothing can be warped onto it: every "
                f"modality must be {ref_shape[0]} x {ref_shape[1]}. Name a georeferenced modality in "
                "grid.reference, or resample this one first."
            )
        if transform is None and shape != ref_shape:
            raise LocalDataError(
                f"{sources[m.file]}: modality `{name}` is {shape[0]} x {shape[1]} pixels without "
                f"georeferencing, so it must already be on the reference grid, which is {ref_shape[0]} x "
                f"{ref_shape[1]}. {fix}"
            )
    for split in ("train", "test"):
        src = sources[spec.labels[split]]
        shape, transform = _label_shape(spec, split, src)
        off_grid = shape != ref_shape or (
            transform is not None
            and ref_transform is not None
            and not all(
                abs(a - b) <= 1e-6 * max(abs(ref_transform.a), 1e-9)
                for a, b in zip(transform, ref_transform, strict=True)
            )
        )
        if off_grid:
            raise LocalDataError(
                f"{src}: the {split} labels are {shape[0]} x {shape[1]} ({_where(transform)}), not on the "
                f"reference grid of `{ref}` ({ref_shape[0]} x {ref_shape[1]}, {_where(ref_transform)}). "
                "Label rasters must be on the reference grid: rasterise or resample them (nearest) onto it."
            )
    return ref_shape


def build_custom(spec: DatasetSpec, out: Path) -> dict[str, Any]:
    """Check, copy and hash the local files into ``out`` atomically; return the receipt written there."""
    check_custom(spec)
    inputs = []
    with atomic_dir(out) as tmp:
        for name, src in sorted(spec.custom_sources.items()):
            before = sha256_file(src)
            shutil.copyfile(src, tmp / name)
            digest = sha256_file(tmp / name)
            if digest != before:
                raise LocalDataError(
                    f"{src}: changed while it was being copied; run the download stage again."
                )
            inputs.append({"file": name, "path": _display(src), "sha256": digest, "size": src.stat().st_size})
        _, files = sha256_tree(tmp, exclude=RESERVED)
        receipt = {"dataset": spec.name, "source": "custom", "inputs": inputs, "files": files}
        write_json(tmp / RECEIPT, receipt)
    log.info("%s: %d custom file(s) copied into %s", spec.name, len(inputs), out)
    return receipt


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.download", description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True, help="name of params/datasets/<name>.yaml")
    parser.add_argument("--out", required=True, type=Path, help="output directory, e.g. data/raw/<name>")
    parser.add_argument("--twin-dir", type=Path, help="the twin stage's output (for source.kind: twin)")
    parser.add_argument("--params-root", type=Path, help="params directory (default: the project's params/)")
    args = parser.parse_args(argv)
    logger = setup_logging()
    try:
        spec = load_dataset(args.dataset, root=args.params_root)
        download_dataset(spec, args.out, args.twin_dir)
    except (DownloadError, ParamsError) as err:
        logger.error("download failed: %s", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
