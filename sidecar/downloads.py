"""Downloading model files into the allowed models directory.

Streams over HTTP(S) into ``<destination>.part``, resumes a partial file with
an HTTP Range request, verifies sha256, and only then renames the file to its
final name, so a model path never names half a file. Knows files and HTTP;
not JSON-RPC (progress goes to a callback, cancellation comes from one), not
models. This is the one part of the sidecar that writes files.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import urlsplit

from .errors import DownloadFailed, InvalidParams

__all__ = ["DownloadOutcome", "Progress", "download"]

_CHUNK = 1024 * 1024
_PROGRESS_EVERY_S = 0.25
_TIMEOUT_S = 30  # a stalled server: also the longest a cancel can wait
_active: set[str] = set()
_active_lock = threading.Lock()


@dataclass(slots=True, frozen=True)
class Progress:
    received: int
    total: int | None
    bytes_per_second: float


@dataclass(slots=True, frozen=True)
class DownloadOutcome:
    path: str
    size_bytes: int
    sha256: str | None  # None when cancelled before the end
    resumed_from: int
    complete: bool


def download(
    url: str,
    destination: str,
    expected_sha256: str | None,
    on_progress: Callable[[Progress], None],
    cancelled: Callable[[], bool],
) -> DownloadOutcome:
    """Fetch ``url`` to ``destination`` (blocking; run it on a thread).

    A cancelled download keeps its ``.part`` file, so the same request later
    resumes it; a failed one keeps it too, unless its content is known bad.
    """
    if urlsplit(url).scheme not in ("http", "https"):
        raise InvalidParams("Invalid params: 'url' must be an http or https URL.", {"field": "url"})
    partial = destination + ".part"
    with _claim(partial):
        return _download_to(url, partial, destination, expected_sha256, on_progress, cancelled)


def _download_to(
    url: str,
    partial: str,
    destination: str,
    expected_sha256: str | None,
    on_progress: Callable[[Progress], None],
    cancelled: Callable[[], bool],
) -> DownloadOutcome:
    start = os.path.getsize(partial) if os.path.exists(partial) else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
            resumed = start if response.status == 206 else 0  # a server without ranges sends it all again
            total = _total(response.headers.get("Content-Length"), resumed)
            digest = _digest_of(partial, resumed)
            with open(partial, "r+b" if resumed else "wb") as file:
                file.seek(resumed)
                file.truncate()
                received = _copy(response, file, digest, resumed, total, on_progress, cancelled)
                file.flush()
                os.fsync(file.fileno())
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:  # nothing after our partial file: it already holds everything
            return _finish(
                partial, destination, _digest_of(partial, start).hexdigest(), expected_sha256, start, start
            )
        raise DownloadFailed(
            f"Download of {url} failed: {_reason(exc)}.", {"reason": _reason(exc), "bytes": start}
        ) from exc
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        got = os.path.getsize(partial) if os.path.exists(partial) else 0
        raise DownloadFailed(
            f"Download of {url} failed: {_reason(exc)}.", {"reason": _reason(exc), "bytes": got}
        ) from exc
    if cancelled() and (total is None or received < total):  # a cancel after the last byte changes nothing
        return DownloadOutcome(destination, received, None, resumed, complete=False)
    if total is not None and received != total:
        raise DownloadFailed(
            f"Download of {url} ended early at {received} of {total} bytes.",
            {"reason": "connection closed", "bytes": received},
        )
    return _finish(partial, destination, digest.hexdigest(), expected_sha256, received, resumed)


def _copy(
    response: http.client.HTTPResponse,
    file: BinaryIO,
    digest: hashlib._Hash,
    received: int,
    total: int | None,
    on_progress: Callable[[Progress], None],
    cancelled: Callable[[], bool],
) -> int:
    started = last_report = time.monotonic()
    first = received
    while not cancelled() and (chunk := response.read1(_CHUNK)):  # what has arrived: cancel stays prompt
        file.write(chunk)
        digest.update(chunk)
        received += len(chunk)
        now = time.monotonic()
        if now - last_report >= _PROGRESS_EVERY_S:
            last_report = now
            on_progress(Progress(received, total, (received - first) / max(now - started, 1e-9)))
    on_progress(Progress(received, total, (received - first) / max(time.monotonic() - started, 1e-9)))
    return received


def _finish(
    partial: str, destination: str, actual: str, expected: str | None, size: int, resumed: int
) -> DownloadOutcome:
    if expected is not None and actual != expected.lower():
        os.remove(partial)  # known bad: resuming it would only repeat the mismatch
        raise DownloadFailed(
            "The downloaded file does not match the expected sha256.",
            {"reason": "sha256 mismatch", "bytes": size, "expected": expected.lower(), "actual": actual},
        )
    os.replace(partial, destination)  # atomic: the final name only ever names a whole file
    return DownloadOutcome(destination, size, actual, resumed, complete=True)


@contextlib.contextmanager
def _claim(partial: str) -> Iterator[None]:
    """One download per destination at a time: two would write the same ``.part`` file."""
    with _active_lock:
        if partial in _active:
            raise DownloadFailed(
                "That destination is already being downloaded.", {"reason": "busy", "bytes": 0}
            )
        _active.add(partial)
    try:
        yield
    finally:
        with _active_lock:
            _active.discard(partial)


def _digest_of(partial: str, length: int) -> hashlib._Hash:
    """sha256 of the first ``length`` bytes already on disk (a resumed download's start)."""
    digest = hashlib.sha256()
    if length:
        with open(partial, "rb") as file:
            remaining = length
            while remaining and (block := file.read(min(_CHUNK, remaining))):
                digest.update(block)
                remaining -= len(block)
    return digest


def _total(content_length: str | None, resumed: int) -> int | None:
    return resumed + int(content_length) if content_length and content_length.isdigit() else None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__
