"""HTTP(S) for downloads: which URLs, redirects and proxies are allowed, and reads that can be cancelled.

Built on urllib with an explicit set of handlers (nothing but http and https,
also through redirects) and a response whose socket reads wait in short slices,
so a cancel or the idle limit ends a read from a server that went quiet. Knows
HTTP, not files or JSON-RPC.
"""

from __future__ import annotations

import http.client
import io
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .errors import DownloadFailed

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ["SCHEMES", "Cancelled", "Patience", "body_range", "open_url", "reason", "unsatisfied_size"]

SCHEMES = ("http", "https")
_IDLE_S = 30.0  # a server silent this long has failed; also the limit on connecting
_POLL_S = 0.25  # how often a read from a silent server looks for a cancel
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

    def waited(self, since: float) -> None:
        """Called after each short wait for data that began at ``since``."""
        self.check()
        if time.monotonic() - since >= _IDLE_S:
            raise TimeoutError(f"the server sent nothing for {_IDLE_S:g} s")


def open_url(url: str, start: int, patience: Patience) -> http.client.HTTPResponse:
    """GET ``url`` from byte ``start`` on (a Range request unless 0); HTTP errors raise ``HTTPError``."""
    response: http.client.HTTPResponse = _opener(patience).open(_request(url, start), timeout=_IDLE_S)
    return response


def unsatisfied_size(content_range: str | None) -> int | None:
    """The file's size from a 416's ``Content-Range: bytes */N``, if the server sent it."""
    match = _UNSATISFIED_RANGE.fullmatch((content_range or "").strip())
    return int(match["whole"]) if match else None


def body_range(response: http.client.HTTPResponse, start: int) -> tuple[int, int | None]:
    """Where the body starts in the file, and the whole file's size when the server says it.

    A 200 is the whole file, even when a range was asked for. A 206 must start
    exactly where the ``.part`` file ends, or appending it would corrupt the file.
    """
    length = _digits(response.headers.get("Content-Length"))
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


def _digits(text: str | None) -> int | None:
    return int(text) if text and text.isascii() and text.isdigit() else None


def _request(url: str, start: int) -> urllib.request.Request:
    return urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})


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
        def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
            super().__init__(sock, *args, **kwargs)
            self.fp = io.BufferedReader(_PatientReader(sock, self.fp, patience))

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

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        since = time.monotonic()
        timeout = self._sock.gettimeout()  # kept for what follows (a TLS handshake after a proxy's CONNECT)
        self._sock.settimeout(_POLL_S)
        try:
            while True:
                try:
                    return self._sock.recv_into(buffer)
                except TimeoutError:
                    self._patience.waited(since)
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
