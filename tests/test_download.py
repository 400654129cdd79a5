"""The download stage against real HTTP servers on 127.0.0.1: fetch, resume, retry, verify, unpack."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import stat
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
import yaml

from stages.config import DatasetSpec, load_dataset
from stages.datasets.twins.serve import parse_range, serve_directory
from stages.download import ManualDownloadRequired, cache_dir, download_dataset, main
from stages.io.archive import CorruptArchive, UnsafeArchive, safe_extract
from stages.io.http import ChecksumMismatch, DownloadError, HtmlInsteadOfData, fetch, looks_like_html

FAST = {"retries": 3, "backoff": 0.001, "timeout": 5}
PAYLOAD = bytes(range(256)) * 4096 * 3 + b"tail"  # 3 MiB and a bit: several 1 MiB blocks
LOGIN_PAGE = (
    b"  \n<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body><form></form></body></html>"
)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tree(root: Path) -> list[str]:
    """Every path under ``root`` (files, links and directories), relative and sorted."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) if root.exists() else []


# --------------------------------------------------------------------------------------------------
# A fault-injecting server: in-memory files, scripted failures, a log of requests
# --------------------------------------------------------------------------------------------------


class FaultServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), FaultHandler)
        self.files: dict[str, tuple[bytes, str]] = {}
        self.faults: dict[str, list[str]] = {}
        self.log: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{name}"

    def add(self, name: str, data: bytes, faults: list[str] = (), ctype: str = "application/zip") -> str:
        self.files[name] = (data, ctype)
        self.faults[name] = list(faults)
        return self.url(name)

    def ranges(self, name: str) -> list[str | None]:
        return [r for n, r in self.log if n == name]


class FaultHandler(BaseHTTPRequestHandler):
    """HTTP/1.0, so every response ends with the connection closing (a 'drop' is a short body)."""

    server: FaultServer

    def log_message(self, format: str, *args) -> None:
        pass

    def _reply(self, status: int, body: bytes, headers: dict[str, str], send: bytes | None = None) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body if send is None else send)

    def do_GET(self) -> None:
        name = self.path.lstrip("/")
        rng = self.headers.get("Range")
        with self.server.lock:
            self.server.log.append((name, rng))
            fault = self.server.faults[name].pop(0) if self.server.faults.get(name) else None
        if name not in self.server.files or fault == "404":
            return self._reply(404, b"not found", {"Content-Type": "text/plain"})
        if fault in ("500", "429"):
            return self._reply(int(fault), b"busy", {"Content-Type": "text/plain"})
        data, ctype = self.server.files[name]
        span = None if fault == "ignore_range" else parse_range(rng, len(data))
        if span == "unsatisfiable":
            return self._reply(416, b"", {"Content-Range": f"bytes */{len(data)}"})
        headers = {"Content-Type": ctype}
        if isinstance(span, tuple):
            headers["Content-Range"] = f"bytes {span[0]}-{span[1]}/{len(data)}"
            body, status = data[span[0] : span[1] + 1], 206
        else:
            body, status = data, 200
        # "drop": promise the whole body, send half of it, hang up.
        self._reply(status, body, headers, send=body[: len(body) // 2] if fault == "drop" else None)


@pytest.fixture
def server() -> Iterator[FaultServer]:
    srv = FaultServer()
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


# --------------------------------------------------------------------------------------------------
# Archives and params files built in tmp_path
# --------------------------------------------------------------------------------------------------


def make_zip(path: Path, members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return path.read_bytes()


def make_tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]]) -> bytes:
    with tarfile.open(path, "w:gz") as tf:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tf.addfile(m)
            else:
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                tf.addfile(info, io.BytesIO(m[1]))
    return path.read_bytes()


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def write_spec(root: Path, name: str, source: dict, **extra) -> DatasetSpec:
    """A minimal schema-valid params file under ``root/datasets``, loaded through ``load_dataset``."""
    data = {
        "name": name,
        "title": f"test dataset {name}",
        "task": "scene",
        "homepage": "https://example.org/dataset",
        "source": source,
        "grid": {"height": 4, "width": 4, "reference": "hsi"},
        "modalities": {"hsi": {"role": "primary", "file": "pkg/a.bin", "format": "geotiff", "bands": 1}},
        "labels": {"format": "envi_roi", "train": "labels.txt", "test": "labels.txt"},
        "classes": [
            {"id": 1, "key": "a", "name": "A", "color": [0, 0, 0]},
            {"id": 2, "key": "b", "name": "B", "color": [9, 9, 9]},
        ],
        "patch_size": 3,
        **extra,
    }
    if source["kind"] == "twin":
        data["twin"] = {"generator": "fake", "seed": 0}
    (root / "datasets").mkdir(parents=True, exist_ok=True)
    (root / "datasets" / f"{name}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return load_dataset(name, root=root)


# --------------------------------------------------------------------------------------------------
# The loopback file server
# --------------------------------------------------------------------------------------------------


def test_serve_directory_answers_ranges(tmp_path: Path) -> None:
    (tmp_path / "pub").mkdir()
    (tmp_path / "pub" / "f.bin").write_bytes(b"0123456789")
    (tmp_path / "secret.txt").write_text("no")
    with serve_directory(tmp_path / "pub") as base:
        get = lambda rng=None: requests.get(f"{base}/f.bin", headers={"Range": rng} if rng else {})  # noqa: E731
        assert (get().status_code, get().content) == (200, b"0123456789")
        r = get("bytes=4-")
        assert (r.status_code, r.content, r.headers["Content-Range"]) == (206, b"456789", "bytes 4-9/10")
        assert get("bytes=2-4").content == b"234"
        assert get("bytes=-3").content == b"789"
        r = get("bytes=10-")
        assert (r.status_code, r.headers["Content-Range"]) == (416, "bytes */10")
        assert requests.get(f"{base}/%2e%2e/secret.txt").status_code == 404
        assert requests.get(f"{base}/missing").status_code == 404
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{base}/f.bin", timeout=1)


# --------------------------------------------------------------------------------------------------
# fetch: success, resume, retries, mirrors
# --------------------------------------------------------------------------------------------------


def test_fetch_resumes_from_partial_file(server: FaultServer, tmp_path: Path) -> None:
    url = server.add("data.zip", PAYLOAD)
    dest = tmp_path / "data.zip"
    (tmp_path / "data.zip.part").write_bytes(PAYLOAD[:300_000])
    assert fetch([url], dest, sha(PAYLOAD), **FAST) == dest
    assert server.ranges("data.zip") == ["bytes=300000-"]
    assert sha(dest.read_bytes()) == sha(PAYLOAD)
    assert not (tmp_path / "data.zip.part").exists()


def test_fetch_retries_after_dropped_connection_and_5xx(server: FaultServer, tmp_path: Path) -> None:
    url = server.add("data.zip", PAYLOAD, faults=["drop", "500", "429"])
    dest = fetch([url], tmp_path / "data.zip", sha(PAYLOAD), **FAST)
    assert dest.read_bytes() == PAYLOAD
    ranges = server.ranges("data.zip")
    # The drop delivered 1.5 MiB, of which the complete first 1 MiB block was kept: every retry
    # resumes from there rather than from zero.
    assert ranges[0] is None and ranges[1:] == [f"bytes={1 << 20}-"] * 3


def test_fetch_restarts_when_server_ignores_range(server: FaultServer, tmp_path: Path) -> None:
    url = server.add("data.zip", PAYLOAD, faults=["ignore_range"])
    (tmp_path / "data.zip.part").write_bytes(PAYLOAD[:1000])
    assert fetch([url], tmp_path / "data.zip", sha(PAYLOAD), **FAST).read_bytes() == PAYLOAD


def test_fetch_416_on_complete_part_is_verified_not_refetched(server: FaultServer, tmp_path: Path) -> None:
    url = server.add("data.zip", PAYLOAD)
    (tmp_path / "data.zip.part").write_bytes(PAYLOAD)
    assert fetch([url], tmp_path / "data.zip", sha(PAYLOAD), **FAST).read_bytes() == PAYLOAD
    assert server.ranges("data.zip") == [f"bytes={len(PAYLOAD)}-"]


def test_fetch_stale_part_is_discarded_after_checksum_failure(server: FaultServer, tmp_path: Path) -> None:
    url = server.add("data.zip", PAYLOAD)
    (tmp_path / "data.zip.part").write_bytes(b"x" * 5000)  # from some other version of the file
    assert fetch([url], tmp_path / "data.zip", sha(PAYLOAD), **FAST).read_bytes() == PAYLOAD
    assert server.ranges("data.zip") == ["bytes=5000-", None]


def test_fetch_4xx_is_not_retried_and_next_mirror_is_used(server: FaultServer, tmp_path: Path) -> None:
    good = server.add("good.zip", PAYLOAD)
    dest = fetch([server.url("gone.zip"), good], tmp_path / "data.zip", sha(PAYLOAD), **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert [n for n, _ in server.log] == ["gone.zip", "good.zip"]


def test_fetch_gives_up_after_retries_and_keeps_part_for_resume(server: FaultServer, tmp_path: Path) -> None:
    url = server.add("data.zip", PAYLOAD, faults=["drop"] + ["500"] * 10)
    with pytest.raises(DownloadError, match="HTTP 500") as err:
        fetch([url], tmp_path / "data.zip", sha(PAYLOAD), **FAST)
    assert "data.zip" in str(err.value)
    assert len(server.log) == FAST["retries"] + 1
    assert not (tmp_path / "data.zip").exists()
    assert (tmp_path / "data.zip.part").stat().st_size == 1 << 20


def test_fetch_checksum_mismatch(server: FaultServer, tmp_path: Path) -> None:
    url = server.add("data.zip", PAYLOAD)
    wrong = "0" * 64
    with pytest.raises(ChecksumMismatch) as err:
        fetch([url], tmp_path / "data.zip", wrong, **FAST)
    msg = str(err.value)
    assert "data.zip" in msg and url in msg and wrong in msg and sha(PAYLOAD) in msg
    assert tree(tmp_path) == []


@pytest.mark.parametrize("ctype", ["text/html; charset=utf-8", "application/octet-stream"])
def test_fetch_html_page_instead_of_data(server: FaultServer, tmp_path: Path, ctype: str) -> None:
    url = server.add("data.zip", LOGIN_PAGE, ctype=ctype)
    with pytest.raises(HtmlInsteadOfData) as err:
        fetch([url], tmp_path / "data.zip", sha(PAYLOAD), **FAST)
    assert "manually" in str(err.value) and str(tmp_path / "data.zip") in str(err.value)
    assert len(server.log) == 1  # not retried
    assert tree(tmp_path) == []


def test_fetch_accepts_binary_mislabelled_as_html(server: FaultServer, tmp_path: Path) -> None:
    url = server.add("data.zip", PAYLOAD, ctype="text/html")
    assert fetch([url], tmp_path / "data.zip", sha(PAYLOAD), **FAST).read_bytes() == PAYLOAD


def test_looks_like_html(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"\xef\xbb\xbf\n  <HTML lang='en'>")
    (tmp_path / "b").write_bytes(b"PK\x03\x04<html>")
    assert looks_like_html(tmp_path / "a") and not looks_like_html(tmp_path / "b")


# --------------------------------------------------------------------------------------------------
# safe_extract
# --------------------------------------------------------------------------------------------------


def test_safe_extract_zip_and_tar(tmp_path: Path) -> None:
    zpath = tmp_path / "a.zip"
    make_zip(zpath, {"pkg/": b"", "pkg/x.txt": b"x", "__MACOSX/pkg/._x.txt": b"junk", "y.txt": b"y"})
    dest = tmp_path / "out"
    assert safe_extract(zpath, dest, "zip") == ["pkg/x.txt", "y.txt"]
    assert tree(dest) == ["pkg", "pkg/x.txt", "y.txt"]
    tpath = tmp_path / "b.tar.gz"
    hard = link("hard", "pkg/z.txt", tarfile.LNKTYPE)
    make_tar(tpath, [("pkg/z.txt", b"z"), link("pkg/alias", "z.txt"), hard])
    assert safe_extract(tpath, dest, "tar") == ["hard", "pkg/alias", "pkg/z.txt"]
    assert (dest / "pkg" / "alias").read_text() == "z" and (dest / "hard").read_text() == "z"
    assert (dest / "pkg" / "x.txt").read_text() == "x"  # merged with the earlier extraction


def _fifo(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.FIFOTYPE
    return info


UNSAFE = {
    "zip-dotdot": ("zip", {"ok.txt": b"ok", "../evil.txt": b"evil"}, None, "../evil.txt"),
    "zip-absolute": ("zip", {"ok.txt": b"ok", "/tmp/evil.txt": b"evil"}, None, "/tmp/evil.txt"),
    "zip-drive": ("zip", {"ok.txt": b"ok", "C:\\evil.txt": b"evil"}, None, "C:"),
    "zip-symlink": ("zip", {"ok.txt": b"ok"}, {"esc": "../../outside"}, "esc"),
    "tar-symlink": ("tar", [("ok.txt", b"ok"), link("esc", "../outside")], None, "esc"),
    "tar-symlink-abs": ("tar", [("ok.txt", b"ok"), link("esc", "/etc/passwd")], None, "esc"),
    "tar-through-link": ("tar", [link("d", "sub"), ("d/evil.txt", b"e")], None, "through a symlink"),
    # Lexically inside ("a/../outside" is "outside"), but a -> . makes it ../outside for real.
    "tar-link-chain": ("tar", [link("a", "."), link("b", "a/../outside")], None, "resolves outside"),
    "tar-hardlink": ("tar", [("ok.txt", b"ok"), link("h", "../outside", tarfile.LNKTYPE)], None, "'h'"),
    "tar-fifo": ("tar", [("ok.txt", b"ok"), _fifo("pipe")], None, "pipe"),
}


@pytest.mark.parametrize("case", list(UNSAFE))
def test_safe_extract_rejects_unsafe_members(tmp_path: Path, case: str) -> None:
    kind, members, symlinks, named = UNSAFE[case]
    work = tmp_path / "work"
    work.mkdir()
    archive = tmp_path / f"bad.{kind}"
    make_zip(archive, members, symlinks) if kind == "zip" else make_tar(archive, members)
    dest = work / "out"
    with pytest.raises(UnsafeArchive) as err:
        safe_extract(archive, dest, kind)
    assert str(archive) in str(err.value) and named in str(err.value)
    assert tree(work) == []  # nothing inside the target, no staging left, nothing outside
    assert tree(tmp_path) == sorted([archive.name, "work"])


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_safe_extract_truncated_archive(tmp_path: Path, kind: str) -> None:
    archive = tmp_path / f"a.{kind}"
    members = {f"m{i}.bin": os.urandom(50_000) for i in range(4)}
    data = make_zip(archive, members) if kind == "zip" else make_tar(archive, list(members.items()))
    archive.write_bytes(data[: len(data) // 2])
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(CorruptArchive, match=r"Delete .* and run the download again"):
        safe_extract(archive, dest, kind)
    assert tree(dest) == [] and tree(tmp_path) == sorted([archive.name, "out"])


def test_safe_extract_bad_crc(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    data = bytearray(make_zip(archive, {"m.txt": b"A" * 1000}))
    # ZIP_DEFLATED of a run of "A" is short; flip a byte of the stored (compressed) data.
    offset = 30 + len("m.txt") + 2
    data[offset] ^= 0xFF
    archive.write_bytes(bytes(data))
    with pytest.raises(CorruptArchive):
        safe_extract(archive, tmp_path / "out", "zip")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------------
# The stage: http, manual and twin sources
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def package(tmp_path: Path) -> dict:
    """A zip with two members and a loose text file, in tmp_path/pub."""
    pub = tmp_path / "pub"
    pub.mkdir()
    members = {"pkg/a.bin": os.urandom(2000), "pkg/b.txt": b"hello\n"}
    zdata = make_zip(pub / "pkg.zip", members)
    (pub / "labels.txt").write_bytes(b"; ENVI Output of ROIs\n")
    return {"dir": pub, "members": members, "zip": zdata, "labels": (pub / "labels.txt").read_bytes()}


OUT_TREE = [
    "archives",
    "archives/labels.txt",
    "archives/pkg.zip",
    "download.json",
    "labels.txt",
    "pkg",
    "pkg/a.bin",
    "pkg/b.txt",
]
CACHED = [f".cache/demo/{f}" for f in ("labels.txt", "labels.txt.url", "pkg.zip", "pkg.zip.url")]


def _http_source(base: str, package: dict, contents: dict | None = None) -> dict:
    return {
        "kind": "http",
        "archives": [
            {
                "file": "pkg.zip",
                "urls": [f"{base}/pkg.zip"],
                "sha256": sha(package["zip"]),
                "unpack": "zip",
                "contents": contents or {k: sha(v) for k, v in package["members"].items()},
            },
            {"file": "labels.txt", "urls": [f"{base}/labels.txt"], "sha256": sha(package["labels"])},
        ],
    }


def test_download_http_verifies_contents(tmp_path: Path, package: dict) -> None:
    out = tmp_path / "raw" / "demo"
    with serve_directory(package["dir"]) as base:
        spec = write_spec(tmp_path / "params", "demo", _http_source(base, package))
        receipt = download_dataset(spec, out, **FAST)
    assert tree(out) == OUT_TREE
    assert receipt["archives"][0]["url"] == f"{base}/pkg.zip"
    assert receipt["files"] == {
        "labels.txt": sha(package["labels"]),
        **{k: sha(v) for k, v in package["members"].items()},
    }
    assert (cache_dir(out) / "pkg.zip").is_file()  # the download cache lives beside out


def test_download_contents_mismatch_names_member(tmp_path: Path, package: dict) -> None:
    out = tmp_path / "raw" / "demo"
    contents = {"pkg/a.bin": sha(package["members"]["pkg/a.bin"]), "pkg/missing.tif": "1" * 64}
    with serve_directory(package["dir"]) as base:
        spec = write_spec(tmp_path / "params", "demo", _http_source(base, package, contents))
        with pytest.raises(ChecksumMismatch, match=r"member pkg/missing\.tif is missing"):
            download_dataset(spec, out, **FAST)
    assert not out.exists()


def test_download_member_with_unknown_checksum_must_be_present(tmp_path: Path, package: dict) -> None:
    """`contents: {member: null}`: the member must be in the archive; its bytes are not checked."""
    out = tmp_path / "raw" / "demo"
    with serve_directory(package["dir"]) as base:
        known = {"pkg/a.bin": None, "pkg/b.txt": sha(package["members"]["pkg/b.txt"])}
        spec = write_spec(tmp_path / "params", "demo", _http_source(base, package, known))
        assert download_dataset(spec, out, **FAST)["files"]["pkg/a.bin"] == sha(
            package["members"]["pkg/a.bin"]
        )
        absent = {"pkg/a.bin": None, "pkg/gone.tif": None}
        spec = write_spec(tmp_path / "params", "demo", _http_source(base, package, absent))
        with pytest.raises(ChecksumMismatch, match=r"member pkg/gone\.tif is missing"):
            download_dataset(spec, tmp_path / "raw" / "other", **FAST)
    assert not (tmp_path / "raw" / "other").exists()


def test_download_truncated_archive_leaves_no_output(tmp_path: Path, package: dict) -> None:
    data = package["zip"][: len(package["zip"]) // 2]
    (package["dir"] / "pkg.zip").write_bytes(data)
    out = tmp_path / "raw" / "demo"
    with serve_directory(package["dir"]) as base:
        source = _http_source(base, package)
        source["archives"][0]["sha256"] = sha(data)  # the download itself verifies
        spec = write_spec(tmp_path / "params", "demo", source)
        with pytest.raises(CorruptArchive, match=r"pkg\.zip"):
            download_dataset(spec, out, **FAST)
    # No output, but the verified downloads stay cached for the rerun.
    assert tree(tmp_path / "raw") == [".cache", ".cache/demo", *CACHED]


def test_download_manual_missing_says_where(tmp_path: Path) -> None:
    source = {
        "kind": "manual",
        "instructions": "Log in to the data portal and accept the licence.",
        "archives": [{"file": "portal.zip", "unpack": "zip", "urls": ["https://example.org/portal.zip"]}],
    }
    spec = write_spec(tmp_path / "params", "demo", source)
    out = tmp_path / "raw" / "demo"
    with pytest.raises(ManualDownloadRequired) as err:
        download_dataset(spec, out)
    msg = str(err.value)
    assert str(out / "archives" / "portal.zip") in msg
    assert "accept the licence" in msg and "https://example.org/dataset" in msg
    assert not out.exists()


def test_download_manual_placed_files(tmp_path: Path, package: dict) -> None:
    source = {
        "kind": "manual",
        "archives": [{"file": "pkg.zip", "unpack": "zip", "sha256": sha(package["zip"])}],
    }
    spec = write_spec(tmp_path / "params", "demo", source)
    out = tmp_path / "raw" / "demo"
    (out / "archives").mkdir(parents=True)
    (out / "archives" / "pkg.zip").write_bytes(LOGIN_PAGE)  # what a browser saves from a login wall
    with pytest.raises(HtmlInsteadOfData, match="HTML page"):
        download_dataset(spec, out)
    assert tree(out) == ["archives", "archives/pkg.zip"]  # not unpacked, not deleted
    (out / "archives" / "pkg.zip").write_bytes(package["zip"])
    receipt = download_dataset(spec, out)
    assert receipt["archives"][0]["url"] == "manual:pkg.zip"
    assert (out / "pkg" / "b.txt").read_bytes() == b"hello\n"
    assert download_dataset(spec, out) == receipt  # the placed file survives the rebuild


def _fake_twin(tmp_path: Path, package: dict) -> Path:
    twin = package["dir"]
    manifest = {
        "archives": {"pkg.zip": sha(package["zip"]), "labels.txt": sha(package["labels"])},
        "contents": {"pkg.zip": {k: sha(v) for k, v in package["members"].items()}},
    }
    (twin / "twin-manifest.json").write_text(json.dumps(manifest))
    return twin


def _twin_source() -> dict:
    # The real dataset's entries: names and unpack kinds apply, URLs and checksums must be ignored.
    return {
        "kind": "twin",
        "archives": [
            {
                "file": "pkg.zip",
                "urls": ["https://example.invalid/pkg.zip"],
                "sha256": "a" * 64,
                "unpack": "zip",
                "contents": {"pkg/a.bin": "b" * 64},
            },
            {"file": "labels.txt", "urls": ["https://example.invalid/labels.txt"], "sha256": "c" * 64},
        ],
    }


def test_download_twin(tmp_path: Path, package: dict) -> None:
    twin = _fake_twin(tmp_path, package)
    spec = write_spec(tmp_path / "params", "demo-twin", _twin_source())
    out = tmp_path / "raw" / "demo-twin"
    receipt = download_dataset(spec, out, twin_dir=twin, **FAST)
    assert tree(out) == OUT_TREE
    assert (out / "pkg" / "a.bin").read_bytes() == package["members"]["pkg/a.bin"]
    assert receipt == json.loads((out / "download.json").read_text())
    assert receipt["dataset"] == "demo-twin" and receipt["source"] == "twin"
    assert receipt["archives"] == [
        {
            "file": "pkg.zip",
            "url": "twin:pkg.zip",
            "sha256": sha(package["zip"]),
            "size": len(package["zip"]),
        },
        {"file": "labels.txt", "url": "twin:labels.txt", "sha256": sha(package["labels"]), "size": 22},
    ]
    assert set(receipt["files"]) == {"labels.txt", "pkg/a.bin", "pkg/b.txt"}
    first = (out / "download.json").read_bytes()
    download_dataset(spec, out, twin_dir=twin, **FAST)
    assert (out / "download.json").read_bytes() == first


def test_download_twin_manifest_must_list_every_archive(tmp_path: Path, package: dict) -> None:
    twin = _fake_twin(tmp_path, package)
    manifest = json.loads((twin / "twin-manifest.json").read_text())
    del manifest["archives"]["labels.txt"]
    (twin / "twin-manifest.json").write_text(json.dumps(manifest))
    spec = write_spec(tmp_path / "params", "demo-twin", _twin_source())
    with pytest.raises(DownloadError, match=r"lists no archive 'labels\.txt'"):
        download_dataset(spec, tmp_path / "raw" / "demo-twin", twin_dir=twin, **FAST)


def test_cli(
    tmp_path: Path, package: dict, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # setup_logging would re-point the root logger at this test's captured stderr; keep it as it is.
    monkeypatch.setattr("stages.download.setup_logging", lambda: logging.getLogger("landfuse"))
    twin = _fake_twin(tmp_path, package)
    write_spec(tmp_path / "params", "demo-twin", _twin_source())
    out = tmp_path / "raw" / "demo-twin"
    args = ["--dataset", "demo-twin", "--out", str(out), "--params-root", str(tmp_path / "params")]
    assert main([*args, "--twin-dir", str(twin)]) == 0
    assert (out / "download.json").is_file()
    assert main(args) == 1
    assert "pass --twin-dir" in caplog.text
