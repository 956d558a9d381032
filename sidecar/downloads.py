"""Downloading model files into the allowed models directory.

Streams over HTTP(S) into ``<destination>.part``, resumes a partial file with
an HTTP Range request, verifies sha256, and only then moves the file to its
final name, so a model path never names half a file. Beside it,
``<destination>.part.json`` records which URL and which version of the file
(its ``ETag`` or ``Last-Modified``) the ``.part`` holds, so a resume never
splices two files; held open and locked for the whole request, it also keeps
out a second download of the same destination, from this process or another
sharing the directory. Knows files and what a download may do to them (HTTP
itself is ``http_fetch``'s); not JSON-RPC (progress goes to a callback,
cancellation comes from one), not models. This is the one part of the sidecar
that writes files.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import http.client
import os
import stat
import sys
import threading
import time
import urllib.error
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import urlsplit

import orjson

from .errors import DownloadFailed, InvalidParams
from .http_fetch import (
    SCHEMES,
    Cancelled,
    Patience,
    body_range,
    open_url,
    reason,
    unsatisfied_size,
    validator,
)

if sys.platform == "win32":
    import msvcrt
else:
    import fcntl

__all__ = ["DownloadOutcome", "Progress", "download", "download_in_thread"]

_CHUNK = 1024 * 1024
_PROGRESS_EVERY_S = 0.25
# No symlink is followed and no text-mode translation happens where the platform has these flags.
_PART_FLAGS = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
_PARTIAL, _RECORD = ".part", ".part.json"  # a destination may end in neither: it would be another's
_RECORD_MAX = 65536  # a record holds a URL of at most 8192 characters
_CLAIM_TRIES = 3


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


async def download_in_thread(
    url: str,
    destination: str,
    expected_sha256: str | None,
    on_progress: Callable[[Progress], None],
    cancelled: Callable[[], bool],
) -> DownloadOutcome:
    """Run ``download`` on a daemon thread of its own.

    Not on asyncio's shared pool: there, slow downloads made tokenize and
    inspectModel wait for a free thread, and ``asyncio.run`` joins that pool's
    threads before the process may exit. A daemon thread never holds the exit
    up; at worst the ``.part`` file misses its last bytes, which a resume fetches.
    """
    result: concurrent.futures.Future[DownloadOutcome] = concurrent.futures.Future()

    def run() -> None:
        with contextlib.suppress(concurrent.futures.InvalidStateError):  # nobody waits for it any more
            try:
                result.set_result(download(url, destination, expected_sha256, on_progress, cancelled))
            except BaseException as exc:  # handed to the awaiting handler, whatever it is
                result.set_exception(exc)

    threading.Thread(target=run, name=f"download {os.path.basename(destination)}", daemon=True).start()
    return await asyncio.wrap_future(result)


def download(
    url: str,
    destination: str,
    expected_sha256: str | None,
    on_progress: Callable[[Progress], None],
    cancelled: Callable[[], bool],
) -> DownloadOutcome:
    """Fetch ``url`` to ``destination`` (blocking; run it on a thread).

    A cancelled download keeps its ``.part`` file, so the same request later
    resumes it; a failed one keeps it too, unless its content is known bad. A
    file already at ``destination`` is never replaced (see ``_Transfer.keep_existing``).
    """
    _check_request(url, destination)
    with _claim(destination) as record:
        transfer = _Transfer(url, destination, expected_sha256, on_progress, Patience(cancelled), record)
        try:
            return transfer.run()
        except Cancelled:
            return DownloadOutcome(destination, transfer.received, None, transfer.resumed, complete=False)


def _check_request(url: str, destination: str) -> None:
    try:
        scheme = urlsplit(url).scheme
    except ValueError:  # e.g. an unclosed IPv6 bracket
        scheme = ""
    if scheme not in SCHEMES:
        raise InvalidParams("Invalid params: 'url' must be an http or https URL.", {"field": "url"})
    if destination.lower().endswith((_PARTIAL, _RECORD)):
        raise InvalidParams(
            f"Invalid params: 'destination' may not end in {_PARTIAL} or {_RECORD}: "
            "downloads in progress use those names.",
            {"field": "destination"},
        )


@dataclass(slots=True, frozen=True)
class _Origin:
    """What a ``.part`` file is a piece of: a URL, and that file's version if the server named it."""

    url: str
    validator: str | None  # an ETag or a Last-Modified date, sent back as If-Range


class _Transfer:
    """One download: where it writes, what it expects, and how far it got."""

    def __init__(
        self,
        url: str,
        destination: str,
        expected_sha256: str | None,
        on_progress: Callable[[Progress], None],
        patience: Patience,
        record: _Record,
    ) -> None:
        self.url = url
        self.destination = destination
        self.partial = destination + _PARTIAL
        self.expected = expected_sha256.lower() if expected_sha256 is not None else None
        self.received = 0  # bytes in the .part file
        self.resumed = 0
        self._on_progress = on_progress
        self._patience = patience
        self._record = record

    def run(self) -> DownloadOutcome:
        try:
            existing = _existing_size(self.destination)
            if existing is not None:
                return self.keep_existing(existing)
            return self._fetch(*self._resume_point())
        except urllib.error.HTTPError as exc:
            exc.close()
            raise self._failed(f"Download of {self.url} failed: {reason(exc)}.", reason(exc)) from exc
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
            if isinstance(exc, http.client.IncompleteRead):
                raise self._failed(
                    f"Download of {self.url} ended early at {self.received} bytes.", "connection closed"
                ) from exc
            raise self._failed(f"Download of {self.url} failed: {reason(exc)}.", reason(exc)) from exc

    def keep_existing(self, size: int) -> DownloadOutcome:
        """Answer for a file already at the destination: kept if it is the one asked for, else refused.

        It is never replaced: a loaded model may be reading it, and it may be
        the user's. With ``sha256`` it must match (no network needed); without,
        its size must be the server's, as node-llama-cpp decides.
        """
        if self.expected is None and self._announced_size() != size:
            raise self._exists()
        with open(self.destination, "rb") as file:
            actual = _sha256_of(file, size, self._patience).hexdigest()
        if self.expected is not None and actual != self.expected:
            raise self._exists()
        return DownloadOutcome(self.destination, size, actual, size, complete=True)

    def _announced_size(self) -> int | None:
        with open_url(self.url, 0, self._patience) as response:
            return body_range(response, 0)[1]

    def _resume_point(self) -> tuple[int, str | None]:
        """How much of the ``.part`` file to keep, and the If-Range that makes the server confirm it.

        Only a ``.part`` recorded as this URL's is resumed, and only when the
        server can tell whether its file changed since (a validator for
        If-Range) or the sha256 will: anything else starts again from 0 rather
        than splice two files together.
        """
        size = _part_size(self.partial)
        origin = self._record.origin()
        if not size or origin is None or origin.url != self.url:
            return 0, None
        if origin.validator is None and self.expected is None:
            return 0, None
        return size, origin.validator

    def _fetch(self, start: int, if_range: str | None) -> DownloadOutcome:
        self.received = start
        try:
            response = open_url(self.url, start, self._patience, if_range)
        except urllib.error.HTTPError as exc:
            if exc.code != 416 or not start:
                raise
            with contextlib.closing(exc):
                return self._finish_unsatisfiable(start, exc.headers.get("Content-Range"))
        with response:
            return self._receive(response, start, if_range)

    def _receive(
        self, response: http.client.HTTPResponse, start: int, if_range: str | None
    ) -> DownloadOutcome:
        resumed, total = body_range(response, start)
        with os.fdopen(_open_own(self.partial), "r+b") as file:
            digest = _sha256_of(file, resumed, self._patience)
            file.seek(resumed)
            # A restart (a server that ignores Range, a changed file, an unknown .part) may be
            # shorter than what is there.
            file.truncate()
            # Only now: the record never names a version whose bytes the .part does not hold.
            self._record.write(_Origin(self.url, validator(response) or (if_range if resumed else None)))
            self.received = self.resumed = resumed
            self._copy(response, file, digest, total)
            file.flush()
            os.fsync(file.fileno())
        if total is not None and self.received != total:
            raise self._failed(
                f"Download of {self.url} ended early at {self.received} of {total} bytes.",
                "connection closed",
            )
        if total is None and not response.chunked and self.expected is None:
            # The body ended when the connection did, which a dropped connection also does.
            raise self._failed(
                f"The server did not announce the size of {self.url}, so the file cannot be known "
                "to be whole; pass sha256 to verify it.",
                "size unknown",
            )
        return self._finish(digest.hexdigest())

    def _copy(
        self,
        response: http.client.HTTPResponse,
        file: BinaryIO,
        digest: hashlib._Hash,
        total: int | None,
    ) -> None:
        started = last_report = time.monotonic()
        first = self.received

        def report(now: float) -> None:
            speed = (self.received - first) / max(now - started, 1e-9)
            self._on_progress(Progress(self.received, total, speed))

        try:
            while True:
                self._patience.check()  # data that keeps coming never reaches the read's own check
                chunk = response.read1(_CHUNK)  # what has arrived: a cancel stays prompt
                if not chunk:
                    return
                file.write(chunk)
                digest.update(chunk)
                self.received += len(chunk)
                now = time.monotonic()
                if now - last_report >= _PROGRESS_EVERY_S:
                    last_report = now
                    report(now)
        finally:
            report(time.monotonic())  # the end of the transfer, however it ended

    def _finish_unsatisfiable(self, start: int, content_range: str | None) -> DownloadOutcome:
        """HTTP 416: nothing lies past the ``.part`` file's end; whole if its size or sha256 says so."""
        whole = unsatisfied_size(content_range)
        if whole is not None and whole < start:
            os.remove(self.partial)  # longer than the file itself: not a piece of it
            self.received = 0
            raise self._failed(
                f"The partial file is longer than {self.url} ({whole} bytes); it was deleted.", "bad range"
            )
        if whole is not None and whole != start:  # a server that contradicts itself: keep the .part
            raise self._failed(
                f"The server refused to resume {self.url} at byte {start} of its {whole}.", "bad range"
            )
        if whole is None and self.expected is None:
            raise self._failed(
                f"The server refused to resume {self.url} and did not confirm its size.", "bad range"
            )
        with os.fdopen(_open_own(self.partial), "rb") as file:
            actual = _sha256_of(file, start, self._patience).hexdigest()
        self.resumed = start
        return self._finish(actual)

    def _finish(self, actual: str) -> DownloadOutcome:
        if self.expected is not None and actual != self.expected:
            os.remove(self.partial)  # known bad: resuming it would only repeat the mismatch
            raise DownloadFailed(
                "The downloaded file does not match the expected sha256.",
                {
                    "reason": "sha256 mismatch",
                    "bytes": self.received,
                    "expected": self.expected,
                    "actual": actual,
                },
            )
        _move_into_place(self.partial, self.destination, self._exists)
        return DownloadOutcome(self.destination, self.received, actual, self.resumed, complete=True)

    def _exists(self) -> DownloadFailed:
        return self._failed(
            f"A different file already exists at {self.destination}; delete it or choose another name.",
            "exists",
        )

    def _failed(self, message: str, why: str) -> DownloadFailed:
        return DownloadFailed(message, {"reason": why, "bytes": self.received})


# -- files ------------------------------------------------------------------


def _existing_size(destination: str) -> int | None:
    try:
        info = os.stat(destination)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(info.st_mode):
        raise DownloadFailed(
            f"{destination} already exists and is not a file.", {"reason": "exists", "bytes": 0}
        )
    return info.st_size


def _part_size(partial: str) -> int:
    try:
        info = os.lstat(partial)
    except FileNotFoundError:
        return 0
    _check_part(info, partial)
    return info.st_size


def _open_own(path: str) -> int:
    """Open or create a ``.part`` or ``.part.json`` file, never following a symlink planted there."""
    with contextlib.suppress(FileNotFoundError):
        _check_part(os.lstat(path), path)  # said plainly; O_NOFOLLOW alone would fail with ELOOP
    fd = os.open(path, _PART_FLAGS, 0o644)
    try:
        _check_part(os.fstat(fd), path)
    except DownloadFailed:
        os.close(fd)
        raise
    return fd


def _check_part(info: os.stat_result, path: str) -> None:
    """Refuse a file that is not a plain file of our own: writing it would write elsewhere."""
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        raise DownloadFailed(
            f"{path} is a link or not a regular file; remove it to download again.",
            {"reason": "unsafe partial file", "bytes": 0},
        )


def _sha256_of(file: BinaryIO, length: int, patience: Patience) -> hashlib._Hash:
    """sha256 of the first ``length`` bytes of ``file`` (a resumed start, or a whole file)."""
    digest = hashlib.sha256()
    file.seek(0)
    remaining = length
    while remaining and (block := file.read(min(_CHUNK, remaining))):
        patience.check()  # several GB take seconds
        digest.update(block)
        remaining -= len(block)
    return digest


def _move_into_place(partial: str, destination: str, exists: Callable[[], DownloadFailed]) -> None:
    """Give the finished file its final name, never replacing a file that took that name meanwhile."""
    try:
        os.link(partial, destination)  # fails if the name is taken, where os.replace would clobber it
    except FileExistsError:
        raise exists() from None
    except OSError:  # no hard links on this file system (FAT, some network shares)
        if os.path.lexists(destination):
            raise exists() from None
        os.rename(partial, destination)
        return
    os.remove(partial)


# -- the record, and the lock on the destination ---------------------------------


class _Record:
    """``<destination>.part.json``, open and locked: where the ``.part`` file came from."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def origin(self) -> _Origin | None:
        """What the ``.part`` is a piece of; None when unknown (no record, or one unreadable)."""
        os.lseek(self._fd, 0, os.SEEK_SET)
        try:
            value = orjson.loads(os.read(self._fd, _RECORD_MAX))
        except orjson.JSONDecodeError:
            return None
        if not isinstance(value, dict) or not isinstance(value.get("url"), str):
            return None
        known = value.get("validator")
        return _Origin(value["url"], known if isinstance(known, str) else None)

    def write(self, origin: _Origin) -> None:
        os.ftruncate(self._fd, 0)
        os.lseek(self._fd, 0, os.SEEK_SET)
        os.write(self._fd, orjson.dumps({"url": origin.url, "validator": origin.validator}))


@contextlib.contextmanager
def _claim(destination: str) -> Iterator[_Record]:
    """One download per destination at a time, across processes: two would write the same ``.part``.

    The lock is the OS's (``flock``, or ``msvcrt.locking`` on Windows), on the
    record, held until the request ends; a process that dies lets it go. The
    record goes once no ``.part`` is left for it to describe.
    """
    path = destination + _RECORD
    try:
        fd = _open_locked(path)
    except OSError as exc:  # e.g. a name too long, or a folder that does not exist
        raise DownloadFailed(
            f"Cannot write {path}: {reason(exc)}.", {"reason": reason(exc), "bytes": 0}
        ) from exc
    try:
        yield _Record(fd)
    finally:
        _release(fd, path, remove=not os.path.lexists(destination + _PARTIAL))


def _open_locked(path: str) -> int:
    """Open the record and lock it without waiting; a lock already held is "busy"."""
    for _ in range(_CLAIM_TRIES):
        fd = _open_own(path)
        if not _lock(fd):
            os.close(fd)
            break
        if _still_named(fd, path):
            return fd
        os.close(fd)  # its holder removed it after we opened it: open the one that now has the name
    raise DownloadFailed("That destination is already being downloaded.", {"reason": "busy", "bytes": 0})


def _still_named(fd: int, path: str) -> bool:
    try:
        named = os.lstat(path)
    except FileNotFoundError:
        return False
    locked = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (locked.st_dev, locked.st_ino)


def _release(fd: int, path: str, *, remove: bool) -> None:
    """Unlock and close; remove the record first if asked, so that nobody locks it meanwhile.

    Where an open file cannot be removed (Windows), it is removed after closing
    instead, unless another request has opened it by then.
    """
    removed = False
    if remove:
        with contextlib.suppress(OSError):
            os.remove(path)
            removed = True
    _unlock(fd)
    os.close(fd)
    if remove and not removed:
        with contextlib.suppress(OSError):
            os.remove(path)


if sys.platform == "win32":

    def _lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # its first byte, from the position 0 it was opened at
        except OSError:
            return False
        return True

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        with contextlib.suppress(OSError):
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)  # closing would too, but "in time", Windows says

else:

    def _lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # per open file: it excludes this process too
        except BlockingIOError:
            return False
        return True

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)
