"""Streaming, resumable, checksum-verified HTTP(S) downloads.

:func:`fetch` writes into ``<dest>.part`` and renames it over ``dest`` only once the whole file is
there and its SHA-256 matches, so ``dest`` is never half-written. A ``.part`` left by an interrupted
run (or by a failed attempt) is resumed with a ``Range`` request. Transient failures (connection
errors, timeouts, truncated bodies, HTTP 5xx and 429) are retried with exponential backoff; other
4xx answers and HTML pages served instead of the data move on to the next mirror at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import requests
from tqdm import tqdm

from stages.io.hashing import sha256_file

log = logging.getLogger("landfuse.http")

BLOCK = 1 << 20
# Some dataset servers (University of Houston) refuse clients without a browser User-Agent.
USER_AGENT = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
)
HTML_SUFFIXES = (".html", ".htm")
MAX_RETRY_AFTER_S = 60.0
_HTML_TAG = re.compile(rb"<(html|head|body|form|script|meta|title)\b", re.IGNORECASE)


class DownloadError(RuntimeError):
    """A file could not be downloaded, verified or unpacked; the message says what to do."""


class ChecksumMismatch(DownloadError):
    """A file's SHA-256 differs from the expected one."""


class HtmlInsteadOfData(DownloadError):
    """A web page (login, cookie consent, Google-Drive confirmation) arrived instead of the data."""


class _Transient(Exception):
    """A failure worth retrying on the same URL (the partial file is kept and resumed)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _Permanent(Exception):
    """A failure that retrying the same URL will not fix; the next mirror is tried."""


class _RangeNotSatisfiable(Exception):
    """HTTP 416 to a resume request: the partial file is complete, or it is not a prefix of the file."""

    def __init__(self, total: int | None) -> None:
        super().__init__(total)
        self.total = total


@dataclass
class _Job:
    """One file to fetch, shared by the attempts on every mirror."""

    dest: Path
    part: Path
    sha256: str | None
    timeout: float
    session: requests.Session
    failures: list[tuple[str, Exception]] = field(default_factory=list)

    @property
    def expects_html(self) -> bool:
        return self.dest.suffix.lower() in HTML_SUFFIXES


# --------------------------------------------------------------------------------------------------
# HTML detection
# --------------------------------------------------------------------------------------------------


def _head_is_html(head: bytes) -> bool:
    text = head.lstrip(b"\xef\xbb\xbf").lstrip().lower()
    return text.startswith((b"<!doctype html", b"<html"))


def looks_like_html(path: str | os.PathLike[str]) -> bool:
    """True when the file starts (after whitespace) with ``<!DOCTYPE html`` or ``<html``."""
    with open(path, "rb") as fh:
        return _head_is_html(fh.read(1024))


def _html_error(dest: Path, url: str) -> HtmlInsteadOfData:
    return HtmlInsteadOfData(
        f"{url} served an HTML page instead of {dest.name}: probably a login, cookie-consent or "
        f"Google-Drive 'cannot scan for viruses' confirmation page. Open the URL in a browser, download "
        f"the file manually and place it at {dest}; the next run verifies and uses it."
    )


# --------------------------------------------------------------------------------------------------
# One HTTP request
# --------------------------------------------------------------------------------------------------


def _content_range(header: str | None) -> tuple[int | None, int | None]:
    """``(start, total)`` from ``bytes a-b/total`` or ``bytes */total``; None where absent or ``*``."""
    m = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", header or "")
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return start, total


def _retry_after(resp: requests.Response) -> float | None:
    value = resp.headers.get("Retry-After", "")
    return min(float(value), MAX_RETRY_AFTER_S) if value.isdigit() else None


def _check_status(resp: requests.Response, offset: int) -> None:
    """Map an HTTP status onto retry-or-not; return normally for 200/206."""
    status = resp.status_code
    if status == 416 and offset:
        raise _RangeNotSatisfiable(_content_range(resp.headers.get("Content-Range"))[1])
    if status >= 500 or status == 429:
        raise _Transient(f"HTTP {status} {resp.reason}", _retry_after(resp))
    if status >= 400:
        raise _Permanent(f"HTTP {status} {resp.reason}")
    if status not in (200, 206):
        raise _Permanent(f"unexpected HTTP {status} {resp.reason}")


def _progress_bar(desc: str, total: int | None, initial: int) -> tqdm:
    """A byte-counting tqdm bar on stderr, quiet (one line per 10 s) when stderr is a log file."""
    interactive = sys.stderr.isatty()
    return tqdm(
        desc=desc,
        total=total,
        initial=initial,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        mininterval=0.2 if interactive else 10.0,
        ascii=not interactive,
        dynamic_ncols=interactive,
        leave=True,
    )


def _body(resp: requests.Response) -> Iterator[bytes]:
    """The response body in blocks; a dropped connection or short body surfaces as ``_Transient``."""
    try:
        yield from resp.iter_content(BLOCK)
    except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as err:
        raise _Transient(f"connection lost mid-body ({type(err).__name__})") from err


def _attempt(job: _Job, url: str) -> None:
    """One GET of ``url`` appended to (or restarting) ``job.part``; returns when the body is complete."""
    offset = job.part.stat().st_size if job.part.exists() else 0
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity", "Accept": "*/*"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = job.session.get(url, headers=headers, stream=True, timeout=job.timeout)
    except (requests.ConnectionError, requests.Timeout) as err:
        raise _Transient(f"{type(err).__name__}: {err}") from err
    with resp:
        _check_status(resp, offset)
        if resp.status_code == 206:
            start, _ = _content_range(resp.headers.get("Content-Range"))
            if start != offset:
                # The server answered a different range than asked: the prefix cannot be trusted.
                job.part.unlink(missing_ok=True)
                raise _Transient(f"server sent range start {start}, asked for {offset}; restarting")
        elif offset:
            log.info("%s: server ignored the Range request; restarting from byte 0", job.dest.name)
            offset = 0
        _stream(job, url, resp, offset)


def _is_html_page(job: _Job, head: bytes, html_header: bool) -> bool:
    """Whether the first block of a body is a web page rather than the expected (non-HTML) file.

    A ``text/html`` header alone is not enough, since some servers mislabel binaries and text files:
    it also needs a text body (no NUL byte, which archives and rasters have) with HTML tags in it.
    """
    if job.expects_html:
        return False
    if _head_is_html(head):
        return True
    return html_header and b"\0" not in head and _HTML_TAG.search(head) is not None


def _stream(job: _Job, url: str, resp: requests.Response, offset: int) -> None:
    length = resp.headers.get("Content-Length")
    expected = int(length) if length and length.isdigit() else None
    html_header = resp.headers.get("Content-Type", "").lower().startswith("text/html")
    written = 0
    with (
        open(job.part, "ab" if offset else "wb") as fh,
        _progress_bar(job.dest.name, None if expected is None else offset + expected, offset) as bar,
    ):
        for block in _body(resp):
            if written == 0 and offset == 0 and _is_html_page(job, block, html_header):
                raise _html_error(job.dest, url)
            fh.write(block)
            written += len(block)
            bar.update(len(block))
    if expected is not None and written < expected:
        raise _Transient(f"body truncated: got {written} of {expected} bytes")


# --------------------------------------------------------------------------------------------------
# Retries, mirrors and verification
# --------------------------------------------------------------------------------------------------


def _try_url(job: _Job, url: str, retries: int, backoff: float) -> bool:
    """Fetch from one mirror with retries; True when ``job.part`` holds the complete body."""
    for attempt in range(retries + 1):
        try:
            _attempt(job, url)
            return True
        except _RangeNotSatisfiable as err:
            if _part_is_complete(job, err.total):
                return True
            log.warning("%s: partial file does not match %s; restarting from byte 0", job.dest.name, url)
            job.part.unlink(missing_ok=True)
            error: Exception = _Transient("HTTP 416 for a partial file that is not a valid prefix")
        except HtmlInsteadOfData as err:
            job.part.unlink(missing_ok=True)
            job.failures.append((url, err))
            return False
        except _Permanent as err:
            job.failures.append((url, err))
            return False
        except _Transient as err:
            error = err
        if attempt == retries:
            job.failures.append((url, error))
            return False
        delay = getattr(error, "retry_after", None) or backoff * 2**attempt
        log.warning(
            "%s: %s from %s; retry %d/%d in %.2fs", job.dest.name, error, url, attempt + 1, retries, delay
        )
        time.sleep(delay)
    return False


def _part_is_complete(job: _Job, total: int | None) -> bool:
    """After HTTP 416: the partial file is complete if its checksum (or, without one, its size) fits."""
    if job.sha256:
        return sha256_file(job.part) == job.sha256
    return total is not None and job.part.stat().st_size == total


def _verify(job: _Job, url: str) -> None:
    """Check the complete ``.part``; on failure delete it and raise, on success move it to ``dest``.

    A file that matches its checksum is the data, whatever it looks like; otherwise a web page is
    reported as such, since that is the more useful diagnosis than a checksum mismatch.
    """
    actual = sha256_file(job.part) if job.sha256 else None
    verified = job.sha256 is not None and actual == job.sha256
    if not verified and not job.expects_html and looks_like_html(job.part):
        job.part.unlink()
        raise _html_error(job.dest, url)
    if job.sha256 is None:
        log.warning("%s: no sha256 given, so the download is not verified", job.dest.name)
    elif not verified:
        size = job.part.stat().st_size
        job.part.unlink()
        raise ChecksumMismatch(
            f"{job.dest.name} downloaded from {url} ({size} bytes) has sha256 {actual}, expected "
            f"{job.sha256}. The download was deleted. Run again to retry; if it fails the same way, "
            f"the mirror serves a different file: check the URL and the sha256 in the dataset's "
            f"params file."
        )
    os.replace(job.part, job.dest)


def _from_mirror(job: _Job, url: str, retries: int, backoff: float) -> bool:
    """Download and verify from one mirror; a mismatch after a resume is retried once from byte 0."""
    resumed = job.part.exists()
    for _ in range(2):
        if not _try_url(job, url, retries, backoff):
            return False
        try:
            _verify(job, url)
            return True
        except ChecksumMismatch as err:
            if not resumed:
                job.failures.append((url, err))
                return False
            # The old .part may have come from another version of the file; start clean once.
            log.warning("%s: checksum failed after resuming; downloading again from byte 0", job.dest.name)
            resumed = False
        except HtmlInsteadOfData as err:
            job.failures.append((url, err))
            return False
    return False


def _final_error(job: _Job) -> DownloadError:
    """The most useful error once every mirror failed: a checksum or HTML error first, then the rest."""
    if len(job.failures) == 1 and isinstance(job.failures[0][1], DownloadError):
        return job.failures[0][1]
    summary = "\n".join(f"  - {url}: {err}" for url, err in job.failures)
    for kind in (ChecksumMismatch, HtmlInsteadOfData):
        if any(isinstance(err, kind) for _, err in job.failures):
            return kind(f"could not download {job.dest.name}; every mirror failed:\n{summary}")
    return DownloadError(
        f"could not download {job.dest.name} to {job.dest}; every mirror failed:\n{summary}\n"
        f"Check the network (and a proxy), or download the file by hand and place it at {job.dest}."
    )


def fetch(
    urls: list[str],
    dest: Path,
    sha256: str | None,
    *,
    retries: int = 4,
    backoff: float = 0.5,
    timeout: float = 60,
    session: requests.Session | None = None,
) -> Path:
    """Download ``dest`` from the first mirror in ``urls`` that works, verify it, return ``dest``.

    An existing ``dest`` whose sha256 matches is reused without a request. Each mirror gets
    ``retries`` retries with delays of ``backoff * 2**n`` seconds (or the server's ``Retry-After``,
    capped at a minute), each resuming from the partial file. Raises :class:`ChecksumMismatch`,
    :class:`HtmlInsteadOfData` or :class:`DownloadError`; on any error ``dest`` is untouched and no
    invalid partial file is left.
    """
    return fetch_from_mirrors(
        urls, dest, sha256, retries=retries, backoff=backoff, timeout=timeout, session=session
    )[0]


def fetch_from_mirrors(
    urls: list[str],
    dest: Path,
    sha256: str | None,
    *,
    retries: int = 4,
    backoff: float = 0.5,
    timeout: float = 60,
    session: requests.Session | None = None,
) -> tuple[Path, str | None]:
    """:func:`fetch`, also returning the URL the file came from (None when a verified ``dest`` was reused)."""
    dest = Path(dest)
    if not urls:
        raise DownloadError(f"no URL to download {dest.name} from; add `urls:` to the params file.")
    if sha256 and dest.is_file() and sha256_file(dest) == sha256:
        log.info("%s: already downloaded and verified", dest.name)
        return dest, None
    dest.parent.mkdir(parents=True, exist_ok=True)
    own_session = session is None
    job = _Job(dest, dest.with_name(dest.name + ".part"), sha256, timeout, session or requests.Session())
    try:
        for url in urls:
            log.info("%s: downloading from %s", dest.name, url)
            if _from_mirror(job, url, retries, backoff):
                return dest, url
        raise _final_error(job)
    finally:
        if own_session:
            with contextlib.suppress(Exception):
                job.session.close()
