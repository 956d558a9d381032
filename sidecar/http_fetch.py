"""HTTP(S) for downloads: which URLs, redirects and proxies are allowed, and reads that can be cancelled.

Built on urllib with an explicit set of handlers (nothing but http and https,
also through redirects) and a response whose socket reads wait in short slices,
so a cancel or the idle limit ends a read from a server that went quiet, and
each step of a response (its head, each piece of its body) has a deadline, so
neither does a server that trickles a byte at a time. Knows HTTP, not files or
JSON-RPC.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .errors import DownloadFailed

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = [
    "SCHEMES",
    "Cancelled",
    "Patience",
    "body_range",
    "open_url",
    "reason",
    "unsatisfied_size",
    "validator",
]

SCHEMES = ("http", "https")
_IDLE_S = 30.0  # a server silent this long has failed; also the limit on connecting and on a response's head
_POLL_S = 0.25  # how often a read from a silent server looks for a cancel
# What a step that ran out of time says (with _IDLE_S): a response's head, or a piece of its body.
_NO_HEAD = "the server sent no complete response head within {:g} s"
_SILENT = "the server sent nothing for {:g} s"
_MAX_REDIRECTS = 10
_CONTENT_RANGE = re.compile(r"bytes (?P<first>\d+)-(?P<last>\d+)/(?P<whole>\d+|\*)")
_UNSATISFIED_RANGE = re.compile(r"bytes \*/(?P<whole>\d+)")


class Cancelled(Exception):
    """The request was cancelled: raised out of whatever waited, to stop where it is."""


@dataclass(slots=True, frozen=True)
class Patience:
    """Lets blocking work notice a cancel, and bounds how long a silent server is waited for."""

    cancelled: Callable[[], bool]

    def check(self) -> None:
        if self.cancelled():
            raise Cancelled


def open_url(
    url: str, start: int, patience: Patience, if_range: str | None = None
) -> http.client.HTTPResponse:
    """GET ``url`` from byte ``start`` on; HTTP errors raise ``HTTPError``.

    From a ``start`` other than 0 it is a Range request, conditional on
    ``if_range`` (an ``ETag`` or ``Last-Modified`` value) when given: a server
    whose file changed since then sends the whole new file (200) instead.
    """
    headers = {"Accept-Encoding": "identity"}  # the file's own bytes, never a compressed form of them
    if start:
        headers["Range"] = f"bytes={start}-"
        if if_range is not None:
            headers["If-Range"] = if_range
    request = urllib.request.Request(url, headers=headers)
    response: http.client.HTTPResponse = _opener(patience).open(request, timeout=_IDLE_S)
    return response


def validator(response: http.client.HTTPResponse) -> str | None:
    """What names this version of the file in an ``If-Range``: a strong ``ETag``, else ``Last-Modified``.

    A weak ETag (``W/"…"``) may not be used there (RFC 9110 §13.1.5).
    """
    etag = (response.headers.get("ETag") or "").strip()
    if etag and not etag.startswith("W/"):
        return etag
    return (response.headers.get("Last-Modified") or "").strip() or None


def unsatisfied_size(content_range: str | None) -> int | None:
    """The file's size from a 416's ``Content-Range: bytes */N``, if the server sent it."""
    match = _UNSATISFIED_RANGE.fullmatch((content_range or "").strip())
    return int(match["whole"]) if match else None


def body_range(response: http.client.HTTPResponse, start: int) -> tuple[int, int | None]:
    """Where the body starts in the file, and the whole file's size when the server says it.

    A 200 is the whole file, even when a range was asked for. A 206 must start
    exactly where the ``.part`` file ends, or appending it would corrupt the file.
    A body that is not the file's plain bytes (compressed), or whose length is
    stated twice differently, is refused: saved, it would not be the file.
    """
    _check_plain(response, start)
    length = _content_length(response, start)
    if response.status != 206:
        return 0, length
    header = (response.headers.get("Content-Range") or "").strip()
    match = _CONTENT_RANGE.fullmatch(header)
    first, last = (int(match["first"]), int(match["last"])) if match else (-1, -1)
    whole = _digits(match["whole"]) if match else None
    if (
        first != start
        or last < first
        or (length is not None and length != last - first + 1)
        or (whole is not None and last >= whole)
    ):
        raise DownloadFailed(
            f"The server answered a request for bytes {start}- with {header or 'no Content-Range'!r}.",
            {"reason": "bad range", "bytes": start},
        )
    return first, whole


def _check_plain(response: http.client.HTTPResponse, start: int) -> None:
    """Refuse a body sent in an encoding: urllib does not decode it, and it is not the file."""
    content = _header_values(response, "Content-Encoding") - {"identity"}
    transfer = _header_values(response, "Transfer-Encoding") - {"identity", "chunked"}
    if content or transfer:
        encoding = ", ".join(sorted(content | transfer))
        raise DownloadFailed(
            f"The server sent the file encoded ({encoding}); only its plain bytes can be saved.",
            {"reason": "unsupported encoding", "bytes": start},
        )


def _content_length(response: http.client.HTTPResponse, start: int) -> int | None:
    """The body's length, if stated once (or the same each time) and the body is not chunked."""
    if response.chunked:
        return None  # chunks say where the body ends; a Content-Length beside them is ignored (RFC 9112 §6.3)
    lengths = _header_values(response, "Content-Length")
    if len(lengths) > 1:  # http.client believes the first one: which is the file's is anyone's guess
        raise DownloadFailed(
            f"The server stated conflicting lengths ({', '.join(sorted(lengths))}).",
            {"reason": "conflicting lengths", "bytes": start},
        )
    return _digits(lengths.pop()) if lengths else None


def _header_values(response: http.client.HTTPResponse, name: str) -> set[str]:
    """The distinct values of a header that may repeat, or list values with commas; lower case."""
    values = (
        value.strip().lower() for header in response.headers.get_all(name, []) for value in header.split(",")
    )
    return {value for value in values if value}


def _digits(text: str | None) -> int | None:
    return int(text) if text and text.isascii() and text.isdigit() else None


def _opener(patience: Patience) -> urllib.request.OpenerDirector:
    """An opener for http(s) only: no ftp, file or data URLs, not even through a redirect.

    Proxies configured for http and https (``HTTP(S)_PROXY``/``NO_PROXY``, or the
    system's settings on macOS and Windows) are honoured, as curl, Ollama and
    huggingface_hub do: behind a corporate proxy there is no other way out, and
    the host decides the sidecar's environment.
    """
    proxies = {scheme: url for scheme, url in urllib.request.getproxies().items() if scheme in SCHEMES}
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(proxies),
        _PatientHandler(patience),
        _RedirectHandler(),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
        urllib.request.UnknownHandler(),
    ):
        opener.add_handler(handler)
    return opener


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follows redirects to http(s) only, never from https down to http, and at most 10 of them."""

    max_redirections = _MAX_REDIRECTS

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        scheme = urlsplit(newurl).scheme
        if scheme not in SCHEMES or (urlsplit(req.full_url).scheme == "https" and scheme != "https"):
            fp.close()
            raise urllib.error.URLError(
                f"redirect to {newurl} refused (only http and https, never https to http)"
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class _PatientHandler(urllib.request.AbstractHTTPHandler):
    """http and https over connections whose responses read patiently (see ``_PatientReader``)."""

    def __init__(self, patience: Patience) -> None:
        super().__init__()
        self._response_class = _patient_response_class(patience)

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._connection(http.client.HTTPConnection), req)

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._connection(http.client.HTTPSConnection), req)

    http_request = urllib.request.AbstractHTTPHandler.do_request_
    https_request = urllib.request.AbstractHTTPHandler.do_request_

    def _connection(
        self, kind: type[http.client.HTTPConnection]
    ) -> Callable[..., http.client.HTTPConnection]:
        def connect(host: str, **kwargs: Any) -> http.client.HTTPConnection:
            connection = kind(host, **kwargs)
            connection.response_class = self._response_class
            return connection

        return connect


def _patient_response_class(patience: Patience) -> type[http.client.HTTPResponse]:
    class PatientResponse(http.client.HTTPResponse):
        """Each step has a deadline: a server sending a byte now and then must still finish it in time."""

        def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
            super().__init__(sock, *args, **kwargs)
            self._patient = _PatientReader(sock, self.fp, patience)
            self.fp = io.BufferedReader(self._patient)

        def begin(self) -> None:
            with self._patient.within(_NO_HEAD):
                super().begin()

        def read1(self, n: int = -1) -> bytes:
            # A chunked body's size lines are read here too: trickled, they are not data.
            with self._patient.within(_SILENT):
                return super().read1(n)

        def read(self, amt: int | None = None) -> bytes:  # e.g. a redirect's body, drained by urllib
            with self._patient.within(_SILENT):
                return super().read(amt)

    return PatientResponse


class _PatientReader(io.RawIOBase):
    """A response's socket, read in short waits that look for a cancel between them.

    A socket file gives up for good after its first timeout, so the only choice
    was one long timeout, which a cancel or a shutdown had to wait out. ``owner``
    is the socket file the response opened: closing it lets the socket close.
    """

    def __init__(self, sock: socket.socket, owner: io.BufferedReader, patience: Patience) -> None:
        super().__init__()
        self._sock = sock
        self._owner = owner
        self._patience = patience
        # When the current step must have ended, and what it says if it has not.
        self._deadline: tuple[float, str] | None = None

    def readable(self) -> bool:
        return True

    @contextlib.contextmanager
    def within(self, failure: str) -> Iterator[None]:
        """Bound a step (a response head, a piece of body) to ``_IDLE_S``; past it, ``TimeoutError``."""
        outer = self._deadline
        if outer is None:  # an inner step gets no more time than the one it is part of
            self._deadline = (time.monotonic() + _IDLE_S, failure)
        try:
            yield
        finally:
            self._deadline = outer

    def readinto(self, buffer: WriteableBuffer) -> int:
        # Here, not only after a silent wait: a server trickling bytes never lets the socket time out.
        self._patience.check()
        deadline, failure = self._deadline or (time.monotonic() + _IDLE_S, _SILENT)
        timeout = self._sock.gettimeout()  # kept for what follows (a TLS handshake after a proxy's CONNECT)
        self._sock.settimeout(_POLL_S)
        try:
            while True:
                if time.monotonic() >= deadline:
                    raise TimeoutError(failure.format(_IDLE_S))
                try:
                    return self._sock.recv_into(buffer)
                except TimeoutError:
                    self._patience.check()
        finally:
            self._sock.settimeout(timeout)

    def close(self) -> None:
        if not self.closed:
            self._owner.close()
        super().close()


def reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        if str(exc.reason).startswith(urllib.request.HTTPRedirectHandler.inf_msg):
            return "too many redirects"
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__
