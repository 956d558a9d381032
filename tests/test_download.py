"""downloadModel against local HTTP(S) servers on 127.0.0.1 (no internet here, none needed)."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import ntpath
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from sidecar import downloads, http_fetch
from sidecar.client import PROTOCOL_VERSION, SidecarClient
from sidecar.downloads import Progress, download
from sidecar.errors import DownloadFailed, ModelPathNotAllowed
from sidecar.model_paths import ModelPaths

from .harness import WAIT, RawSidecar

PAYLOAD = bytes(range(256)) * 8192  # 2 MiB: two read chunks, so progress and cancel have room
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
OTHER = PAYLOAD[::-1]  # another file of the same size
HALF = len(PAYLOAD) // 2
GZIPPED = gzip.compress(PAYLOAD)
STALL_BYTES = 65536 + 1  # sent in two pieces far enough apart for a downloadProgress between
LONG_WAIT = 60.0  # a stalled handler's wait; the fixture releases it long before
TRICKLE_S = 4.0  # how long a trickling handler goes on; the fixes under test end it far sooner
PACES = {"/slow.gguf": 0.02, "/slower.gguf": 0.06}  # seconds between 64 KiB pieces


def _etag(content: bytes) -> str:
    return f'"{hashlib.sha256(content).hexdigest()[:16]}"'


class ModelServer(BaseHTTPRequestHandler):
    """Serves PAYLOAD in the ways real servers do, and break.

    The file is PAYLOAD unless ``payloads`` names another for the path.
    ``/model.gguf`` honours Range; ``/drop.gguf`` closes halfway the first time
    it is asked for the start; ``/slow.gguf`` and ``/slower.gguf`` trickle;
    ``/stall.gguf`` sends its headers and a few bytes, then goes silent without
    closing; ``/unsized*`` sends no Content-Length and ends the body by closing
    (``-drop``: halfway); ``/chunked*`` uses chunked encoding (``-drop``: no
    final chunk; ``-length``: a wrong Content-Length beside it);
    ``/wrong-range.gguf`` answers a range with bytes from the start;
    ``/no-range.gguf`` ignores Range; ``/416.gguf`` refuses any range;
    ``/redirect.gguf?to=URL`` redirects (to ``/model.gguf`` by default),
    ``/loop.gguf`` to itself, ``/hops/N`` N times. ``/etag/<path>`` serves
    ``<path>`` with an ETag and honours If-Range. ``/gzip.gguf`` is compressed,
    ``/two-lengths.gguf`` states two lengths, and ``/trickle-head.gguf`` and
    ``/trickle-chunk.gguf`` send a byte every 50 ms of their head and of a
    chunk's size line.
    """

    protocol_version = "HTTP/1.1"  # chunked bodies need it; the client's "Connection: close" ends each
    drops: set[str] = set()
    requests: list[str] = []
    request_headers: list[dict[str, str]] = []
    payloads: dict[str, bytes] = {}
    stalls = threading.Semaphore(0)
    release = threading.Event()

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        with contextlib.suppress(ConnectionError):  # the client went away: a cancel, or a refusal
            self._answer()

    def _answer(self) -> None:
        ModelServer.requests.append(self.path)
        ModelServer.request_headers.append(dict(self.headers.items()))
        path = urlsplit(self.path).path  # a request through a proxy names the whole URL
        if path.startswith(("/redirect", "/loop", "/hops/")):
            self._redirect(path, parse_qs(urlsplit(self.path).query).get("to", ["/model.gguf"])[0])
        elif path.startswith("/unsized"):
            self._send_head(200, {})
            self.wfile.write(PAYLOAD[:HALF] if path.endswith("-drop.gguf") else PAYLOAD)
        elif path.startswith("/chunked"):
            self._send_chunked(drop=path.endswith("-drop.gguf"), length=path.endswith("-length.gguf"))
        elif path == "/gzip.gguf":
            self._send_head(200, {"Content-Encoding": "gzip", "Content-Length": str(len(GZIPPED))})
            self.wfile.write(GZIPPED)
        elif path == "/two-lengths.gguf":
            self.send_response(200)
            self.send_header("Content-Length", "10")
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)
        elif path.startswith("/trickle-"):
            self._trickle(head=path == "/trickle-head.gguf")
        else:
            self._send_file(path, _range_start(self.headers.get("Range")))

    def _send_file(self, path: str, start: int) -> None:
        payload, etag = self._version(path)
        if etag is not None:
            path = path.removeprefix("/etag")
            if self.headers.get("If-Range") not in (None, etag):
                start = 0  # the file changed since: the whole new one (RFC 9110 §13.1.5)
        if path in ("/wrong-range.gguf", "/no-range.gguf"):
            start_sent = 0
            status = 206 if path == "/wrong-range.gguf" and start else 200
        else:
            start_sent, status = start, 206 if start else 200
        if start_sent >= len(payload) or (path == "/416.gguf" and start):  # nothing is left in that range
            self._send_head(416, {"Content-Range": f"bytes */{len(payload)}", "Content-Length": "0"})
            return
        body = payload[start_sent:]
        headers = {"Content-Length": str(len(body)), **({"ETag": etag} if etag else {})}
        if status == 206:
            headers["Content-Range"] = f"bytes {start_sent}-{len(payload) - 1}/{len(payload)}"
        self._send_head(status, headers)
        if path == "/missing.gguf":
            return
        if path == "/drop.gguf" and start == 0 and path not in self.drops:
            self.drops.add(path)
            self.wfile.write(body[:HALF])
            return  # the handler ends: the connection closes short of Content-Length
        if path == "/stall.gguf":
            for piece in (body[: STALL_BYTES - 1], body[STALL_BYTES - 1 : STALL_BYTES]):
                self.wfile.write(piece)
                self.wfile.flush()
                ModelServer.release.wait(0.3)  # the sidecar reports progress at most every 0.25 s
            ModelServer.stalls.release()
            ModelServer.release.wait(LONG_WAIT)
            return
        step = 65536 if path in PACES else len(body)
        for offset in range(0, len(body), step):
            self.wfile.write(body[offset : offset + step])
            if path in PACES:
                threading.Event().wait(PACES[path])

    def _version(self, path: str) -> tuple[bytes, str | None]:
        """The file a path serves, and its ETag if it has one."""
        payload = self.payloads.get(path.removeprefix("/etag"), PAYLOAD)
        return payload, _etag(payload) if path.startswith("/etag/") else None

    def _trickle(self, *, head: bool) -> None:
        if head:
            self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slowly: ")
        else:
            self._send_head(200, {"Transfer-Encoding": "chunked"})
            self.wfile.write(b"%x\r\n%s\r\n" % (65536, PAYLOAD[:65536]))
        ModelServer.stalls.release()
        ends = time.monotonic() + TRICKLE_S
        while time.monotonic() < ends and not ModelServer.release.wait(0.05):
            self.wfile.write(b"0")  # a header value, or the digits of a chunk size (0: the last chunk)
        self.wfile.write(b"\r\nContent-Length: 0\r\n\r\n" if head else b"\r\n\r\n")

    def _send_chunked(self, *, drop: bool, length: bool) -> None:
        self._send_head(200, {"Transfer-Encoding": "chunked", **({"Content-Length": "10"} if length else {})})
        for offset in range(0, HALF if drop else len(PAYLOAD), 65536):
            piece = PAYLOAD[offset : offset + 65536]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        if not drop:
            self.wfile.write(b"0\r\n\r\n")

    def _redirect(self, path: str, to: str) -> None:
        if path.startswith("/hops/"):
            left = int(path.removeprefix("/hops/"))
            target = f"/hops/{left - 1}" if left > 1 else "/model.gguf"
        else:
            target = path if path == "/loop.gguf" else to
        self._send_head(302, {"Location": target, "Content-Length": "0"})

    def _send_head(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


def _range_start(header: str | None) -> int:
    match = re.fullmatch(r"bytes=(\d+)-", header or "")
    return int(match[1]) if match else 0


@pytest.fixture
def server() -> Iterator[str]:
    yield from _serve(None)


def _serve(tls: ssl.SSLContext | None) -> Iterator[str]:
    ModelServer.drops = set()
    ModelServer.requests = []
    ModelServer.request_headers = []
    ModelServer.payloads = {}
    ModelServer.stalls = threading.Semaphore(0)
    ModelServer.release = threading.Event()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), ModelServer)
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)  # a quick shutdown
    thread.start()
    yield f"{'https' if tls else 'http'}://127.0.0.1:{httpd.server_address[1]}"
    ModelServer.release.set()
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1: (certificate, key)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        + ["-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def tls_server(certificate: tuple[Path, Path]) -> Iterator[str]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    yield from _serve(context)


@pytest.fixture
def trusting(models_dir: Path, certificate: tuple[Path, Path]) -> Iterator[RawSidecar]:
    """A confined sidecar that trusts the test certificate (OpenSSL reads SSL_CERT_FILE)."""
    yield from _started(models_dir, {"SSL_CERT_FILE": str(certificate[0])})


def _started(models_dir: Path, env: dict[str, str]) -> Iterator[RawSidecar]:
    sidecar = RawSidecar("--models-dir", str(models_dir), env=env)
    try:
        sidecar.initialize()
        yield sidecar
    finally:
        sidecar.stop()
    assert not sidecar.bad_lines


def _leave_partial(
    models_dir: Path, name: str, content: bytes, url: str, validator: str | None = None
) -> Path:
    """A ``.part`` file as an earlier request for ``url`` left it, with its ``.part.json`` record."""
    (models_dir / f"{name}.part.json").write_text(json.dumps({"url": url, "validator": validator}))
    part = models_dir / f"{name}.part"
    part.write_bytes(content)
    return part


def _wait_for_stalls(count: int) -> None:
    for _ in range(count):
        assert ModelServer.stalls.acquire(timeout=10), "the download never reached the silent server"


def _wait_until_waiting(sidecar: RawSidecar, request_id: object) -> None:
    """Until the sidecar has all the bytes the silent server sent, and so waits in a read for more."""
    message = sidecar.next_message()
    while message["params"]["bytes"] < STALL_BYTES:  # only its downloadProgress comes before the stall
        message = sidecar.next_message()
    assert message == {
        "jsonrpc": "2.0",
        "method": "downloadProgress",
        "params": {**message["params"], "requestId": request_id, "bytes": STALL_BYTES},
    }


# -- the usual path ------------------------------------------------------------


def test_download_verifies_and_renames_into_place(
    confined: RawSidecar, server: str, models_dir: Path
) -> None:
    request_id = confined.send_request("downloadModel", {"url": f"{server}/model.gguf", "sha256": SHA256})
    response = confined.response(request_id)
    assert response["result"] == {
        "modelPath": str(models_dir / "model.gguf"),
        "sizeBytes": len(PAYLOAD),
        "sha256": SHA256,
        "resumedFrom": 0,
        "complete": True,
    }
    assert (models_dir / "model.gguf").read_bytes() == PAYLOAD
    assert not (models_dir / "model.gguf.part").exists()
    progress = [m["params"] for m in confined.notifications("downloadProgress")]
    assert progress and progress[-1] == {
        "requestId": request_id,
        "bytes": len(PAYLOAD),
        "total": len(PAYLOAD),
        "bytesPerSecond": progress[-1]["bytesPerSecond"],
    }


def test_an_https_download_works(trusting: RawSidecar, tls_server: str, models_dir: Path) -> None:
    result = trusting.request("downloadModel", {"url": f"{tls_server}/model.gguf", "sha256": SHA256})
    assert result["complete"] and (models_dir / "model.gguf").read_bytes() == PAYLOAD


def test_a_dropped_connection_leaves_a_partial_file_that_the_next_try_resumes(
    confined: RawSidecar, server: str, models_dir: Path
) -> None:
    params = {"url": f"{server}/drop.gguf", "sha256": SHA256}
    failed = confined.error("downloadModel", params)
    assert failed["code"] == -32012 and failed["data"] == {"reason": "connection closed", "bytes": HALF}
    assert confined.notifications("downloadProgress")[-1]["params"]["bytes"] == HALF  # the transfer's end
    assert not (models_dir / "drop.gguf").exists()  # never half a file under the final name
    assert (models_dir / "drop.gguf.part").stat().st_size == HALF
    resumed = confined.request("downloadModel", params)
    assert resumed["resumedFrom"] == HALF and resumed["sha256"] == SHA256
    assert (models_dir / "drop.gguf").read_bytes() == PAYLOAD


@pytest.mark.parametrize(
    ("second", "sha256", "resumed"),
    [
        ("/etag/drop.gguf", None, HALF),  # the server confirms the version (If-Range)
        ("/drop.gguf", SHA256, HALF),  # the sha256 will tell
        ("/drop.gguf", None, 0),  # nothing could tell a changed file: start again
        ("/model.gguf", SHA256, 0),  # another URL's file, even of the same name
    ],
    ids=["validator", "sha256", "neither", "another URL"],
)
def test_a_partial_file_is_resumed_only_when_it_is_known_to_be_a_piece_of_the_same_file(
    confined: RawSidecar, server: str, models_dir: Path, second: str, sha256: str | None, resumed: int
) -> None:
    first = "/etag/drop.gguf" if second == "/etag/drop.gguf" else "/drop.gguf"
    params = {"destination": "m.gguf", **({"sha256": sha256} if sha256 else {})}
    assert confined.error("downloadModel", {"url": server + first, **params})["data"]["bytes"] == HALF
    record = json.loads((models_dir / "m.gguf.part.json").read_text())
    assert record == {"url": server + first, "validator": _etag(PAYLOAD) if "etag" in first else None}
    result = confined.request("downloadModel", {"url": server + second, **params})
    assert result["complete"] and result["resumedFrom"] == resumed
    assert (models_dir / "m.gguf").read_bytes() == PAYLOAD
    assert ModelServer.request_headers[1].get("If-Range") == (_etag(PAYLOAD) if "etag" in first else None)


def test_a_partial_file_of_a_version_since_replaced_is_not_resumed(
    confined: RawSidecar, server: str, models_dir: Path
) -> None:
    url = f"{server}/etag/drop.gguf"
    ModelServer.payloads["/drop.gguf"] = OTHER
    assert confined.error("downloadModel", {"url": url})["data"]["bytes"] == HALF
    ModelServer.payloads["/drop.gguf"] = PAYLOAD  # a new version, of the same size
    result = confined.request("downloadModel", {"url": url})
    assert result["complete"] and result["resumedFrom"] == 0 and result["sha256"] == SHA256
    assert (models_dir / "drop.gguf").read_bytes() == PAYLOAD
    assert ModelServer.request_headers[1]["If-Range"] == _etag(OTHER)


def test_a_checksum_mismatch_fails_and_removes_the_partial_file(
    confined: RawSidecar, server: str, models_dir: Path
) -> None:
    error = confined.error("downloadModel", {"url": f"{server}/model.gguf", "sha256": "0" * 64})
    assert error["code"] == -32012 and error["data"]["reason"] == "sha256 mismatch"
    assert error["data"]["actual"] == SHA256
    assert list(models_dir.iterdir()) == []


def test_cancel_keeps_the_partial_file_for_later(confined: RawSidecar, server: str, models_dir: Path) -> None:
    request_id = confined.send_request("downloadModel", {"url": f"{server}/slow.gguf"})
    first = confined.next_message()
    assert first["method"] == "downloadProgress" or "result" in first
    confined.request("cancel", {"requestId": request_id})
    result = confined.response(request_id)["result"]
    assert result["complete"] is False and result["sha256"] is None
    assert not (models_dir / "slow.gguf").exists()
    assert (models_dir / "slow.gguf.part").stat().st_size == result["sizeBytes"] < len(PAYLOAD)


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"url": "file:///etc/passwd", "destination": "x.gguf"}, -32602),
        ({"url": "{server}/model.gguf", "destination": "../escape.gguf"}, -32011),
        ({"url": "{server}/model.gguf", "destination": "/tmp/elsewhere.gguf"}, -32011),
        ({"url": "http://127.0.0.1:9/model.gguf"}, -32012),  # nothing listens on the discard port
        ({"url": "{server}/model.gguf", "destination": "no-such-folder/m.gguf"}, -32012),
        ({"url": "{server}/model.gguf", "destination": "m" * 300 + ".gguf"}, -32012),  # too long a name
        ({"url": "{server}/missing.gguf", "sha256": SHA256}, -32012),
    ],
)
def test_refused_and_failed_downloads(
    confined: RawSidecar, server: str, models_dir: Path, params: dict[str, str], code: int
) -> None:
    filled = {key: value.replace("{server}", server) for key, value in params.items()}
    assert confined.error("downloadModel", filled)["code"] == code
    assert not any(path.suffix == ".gguf" for path in models_dir.iterdir())


@pytest.mark.parametrize(
    ("url", "destination"),
    [
        ("/model.gguf", "m.gguf.part"),
        ("/model.gguf", "m.gguf.part.json"),
        ("/model.gguf", "M.GGUF.PART"),
        ("/model.gguf.part", None),
    ],
)
def test_a_destination_named_like_a_download_in_progress_is_refused(
    confined: RawSidecar, server: str, models_dir: Path, url: str, destination: str | None
) -> None:
    params = {"url": server + url, **({"destination": destination} if destination else {})}
    error = confined.error("downloadModel", params)
    assert error["code"] == -32602 and error["data"] == {"field": "destination"}
    assert list(models_dir.iterdir()) == [] and ModelServer.requests == []


@pytest.mark.parametrize(
    ("method", "params", "field"),
    [
        ("downloadModel", {"url": "{server}/x%00y.gguf"}, "destination"),
        ("downloadModel", {"url": "{server}/model.gguf", "destination": "a\u0000b.gguf"}, "destination"),
        ("downloadModel", {"url": "http://[::1/x.gguf"}, "url"),
        ("downloadModel", {"url": "http://[::1/x.gguf", "destination": "x.gguf"}, "url"),
        ("inspectModel", {"modelPath": "{models}/a\u0000b.gguf"}, "modelPath"),
        ("loadModel", {"modelPath": "{models}/a\u0000b.gguf"}, "modelPath"),
    ],
)
def test_nul_characters_and_malformed_urls_are_invalid_params(
    confined: RawSidecar, server: str, models_dir: Path, method: str, params: dict[str, str], field: str
) -> None:
    filled = {
        k: v.replace("{server}", server).replace("{models}", str(models_dir)) for k, v in params.items()
    }
    error = confined.error(method, filled)
    assert error["code"] == -32602 and error["data"] == {"field": field}
    assert list(models_dir.iterdir()) == []


def test_downloads_need_a_models_directory(sidecar: RawSidecar, server: str) -> None:
    assert sidecar.error("downloadModel", {"url": f"{server}/model.gguf"})["code"] == -32011


@pytest.mark.parametrize(
    ("path", "sha256"), [("/model.gguf", SHA256), ("/etag/model.gguf", None)], ids=["sha256", "size"]
)
def test_a_complete_partial_file_is_finished_not_refetched(
    confined: RawSidecar, server: str, models_dir: Path, path: str, sha256: str | None
) -> None:
    # E.g. a cancel that came after the last byte.
    _leave_partial(models_dir, "model.gguf", PAYLOAD, server + path, None if sha256 else _etag(PAYLOAD))
    params = {"url": server + path, **({"sha256": sha256} if sha256 else {})}
    result = confined.request("downloadModel", params)  # the server's 416 says bytes */<size>
    assert result["complete"] and result["resumedFrom"] == len(PAYLOAD)
    assert [p.name for p in models_dir.iterdir()] == ["model.gguf"]  # the record went with the .part
    assert (models_dir / "model.gguf").read_bytes() == PAYLOAD


def test_a_partial_file_longer_than_the_servers_is_deleted(
    confined: RawSidecar, server: str, models_dir: Path
) -> None:
    url = f"{server}/etag/model.gguf"
    _leave_partial(models_dir, "model.gguf", PAYLOAD + b"extra", url, _etag(PAYLOAD))
    error = confined.error("downloadModel", {"url": url})
    assert error["code"] == -32012 and error["data"] == {"reason": "bad range", "bytes": 0}
    assert list(models_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("path", "sha256"), [("/416.gguf", SHA256), ("/etag/416.gguf", None)], ids=["sha256", "validator"]
)
def test_a_refusal_to_resume_that_states_another_size_keeps_the_partial_file(
    confined: RawSidecar, server: str, models_dir: Path, path: str, sha256: str | None
) -> None:
    """A 416 saying the file is bigger than the .part contradicts itself: not a reason to hash or delete."""
    part = _leave_partial(
        models_dir, "416.gguf", PAYLOAD[:HALF], server + path, None if sha256 else _etag(PAYLOAD)
    )
    error = confined.error("downloadModel", {"url": server + path, **({"sha256": sha256} if sha256 else {})})
    assert error["code"] == -32012 and error["data"] == {"reason": "bad range", "bytes": HALF}
    assert part.read_bytes() == PAYLOAD[:HALF]


def test_a_whole_file_shorter_than_the_partial_one_replaces_all_of_it(
    confined: RawSidecar, server: str, models_dir: Path
) -> None:
    (models_dir / "model.gguf.part").write_bytes(
        PAYLOAD + b"extra"
    )  # no record: where it came from is unknown
    result = confined.request("downloadModel", {"url": f"{server}/model.gguf"})
    assert result["complete"] and result["resumedFrom"] == 0 and result["sha256"] == SHA256
    assert (models_dir / "model.gguf").read_bytes() == PAYLOAD
    assert "Range" not in ModelServer.request_headers[0]


def test_one_download_per_destination_at_a_time(confined: RawSidecar, server: str) -> None:
    first = confined.send_request("downloadModel", {"url": f"{server}/slow.gguf"})
    assert confined.next_message()["method"] == "downloadProgress"  # the first one is under way
    second = confined.error("downloadModel", {"url": f"{server}/slow.gguf"})
    assert second["code"] == -32012 and second["data"]["reason"] == "busy"
    assert confined.response(first)["result"]["complete"]


def test_a_second_sidecar_sharing_the_directory_finds_the_destination_busy(
    confined: RawSidecar, server: str, models_dir: Path
) -> None:
    first = confined.send_request("downloadModel", {"url": f"{server}/stall.gguf"})
    _wait_until_waiting(confined, first)
    for other in _started(models_dir, {}):
        busy = other.error("downloadModel", {"url": f"{server}/stall.gguf", "sha256": SHA256})
        assert busy["code"] == -32012 and busy["data"] == {"reason": "busy", "bytes": 0}
        confined.request("cancel", {"requestId": first})
        assert confined.response(first)["result"]["complete"] is False  # which lets the destination go
        params = {"url": f"{server}/model.gguf", "destination": "stall.gguf", "sha256": SHA256}
        assert other.request("downloadModel", params)["complete"]
    assert (models_dir / "stall.gguf").read_bytes() == PAYLOAD


def test_a_record_removed_while_it_was_being_locked_is_not_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its holder finished, and removed it, between our open and our lock: a lock on a file that
    has lost its name would exclude nobody."""
    destination = str(tmp_path / "m.gguf")
    lock = downloads._lock
    with contextlib.ExitStack() as claims, contextlib.ExitStack() as holder:
        holder.enter_context(downloads._claim(destination))

        def lock_once_the_holder_is_done(fd: int) -> bool:
            holder.close()  # no .part left: the record goes (closing twice does nothing)
            return lock(fd)

        monkeypatch.setattr(downloads, "_lock", lock_once_the_holder_is_done)
        claims.enter_context(downloads._claim(destination))
        monkeypatch.setattr(downloads, "_lock", lock)
        with pytest.raises(DownloadFailed) as third:
            claims.enter_context(downloads._claim(destination))
    assert third.value.data == {"reason": "busy", "bytes": 0}


# -- a server that goes silent -------------------------------------------------


def test_cancel_answers_promptly_while_the_server_is_silent(
    confined: RawSidecar, server: str, models_dir: Path
) -> None:
    request_id = confined.send_request("downloadModel", {"url": f"{server}/stall.gguf"})
    _wait_until_waiting(confined, request_id)
    cancelled_at = time.monotonic()
    assert confined.request("cancel", {"requestId": request_id}) == {"cancelled": True}
    result = confined.response(request_id, timeout=5)["result"]
    assert time.monotonic() - cancelled_at < 2
    assert result["complete"] is False and result["sha256"] is None
    assert result["sizeBytes"] == (models_dir / "stall.gguf.part").stat().st_size == STALL_BYTES


@pytest.mark.parametrize(
    "trigger",
    [
        "shutdown",
        "stdin EOF",
        pytest.param("SIGTERM", marks=pytest.mark.skipif(sys.platform == "win32", reason="POSIX signal")),
    ],
)
def test_a_download_from_a_silent_server_does_not_hold_up_the_exit(
    confined: RawSidecar, server: str, trigger: str
) -> None:
    request_id = confined.send_request("downloadModel", {"url": f"{server}/stall.gguf"})
    _wait_until_waiting(confined, request_id)
    stop_at = time.monotonic()
    if trigger == "shutdown":
        confined.send_request("shutdown")
    elif trigger == "stdin EOF":
        confined.close_stdin()
    else:
        confined.process.send_signal(signal.SIGTERM)
    assert confined.wait_exit(timeout=5) == 0
    assert time.monotonic() - stop_at < 2  # the protocol's promise
    assert confined.response(request_id, timeout=1)["result"]["complete"] is False


def test_a_download_stuck_connecting_does_not_hold_up_the_exit(confined: RawSidecar) -> None:
    """A TLS handshake that never ends is not interruptible (only the idle limit ends it): its thread
    must not keep the process alive."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        silent.settimeout(10)
        confined.send_request("downloadModel", {"url": f"https://127.0.0.1:{silent.getsockname()[1]}/m.gguf"})
        connection, _address = silent.accept()  # the sidecar now waits for the server's TLS hello
        with connection:
            stop_at = time.monotonic()
            confined.send_request("shutdown")
            assert confined.wait_exit(timeout=5) == 0
            assert time.monotonic() - stop_at < 2


def test_other_requests_answer_while_downloads_stall(
    confined: RawSidecar, server: str, models_dir: Path, tiny_model: Path
) -> None:
    shutil.copy(tiny_model, models_dir / "tiny.gguf")
    pool = min(32, (os.cpu_count() or 1) + 4)  # the threads of asyncio's default pool
    downloads_ids = [
        confined.send_request("downloadModel", {"url": f"{server}/stall.gguf", "destination": f"s{n}.gguf"})
        for n in range(pool + 1)
    ]
    _wait_for_stalls(pool)  # as many as would fill that pool
    inspected = confined.response(
        confined.send_request("inspectModel", {"modelPath": str(models_dir / "tiny.gguf")}), timeout=5
    )
    assert inspected["result"]["architecture"] == "llama"
    for request_id in downloads_ids:
        confined.send_request("cancel", {"requestId": request_id})
    assert all(confined.response(i)["result"]["complete"] is False for i in downloads_ids)


def test_a_server_silent_for_the_idle_limit_fails_the_download(
    server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_fetch, "_IDLE_S", 0.5)
    with pytest.raises(DownloadFailed) as failed:
        download(f"{server}/stall.gguf", str(tmp_path / "m.gguf"), None, _ignore, _never)
    assert failed.value.data == {"reason": "the server sent nothing for 0.5 s", "bytes": STALL_BYTES}
    assert (tmp_path / "m.gguf.part").stat().st_size == STALL_BYTES


def test_cancel_answers_promptly_while_the_server_trickles_its_headers(
    confined: RawSidecar, server: str
) -> None:
    request_id = confined.send_request("downloadModel", {"url": f"{server}/trickle-head.gguf"})
    _wait_for_stalls(1)
    cancelled_at = time.monotonic()
    confined.send_request("cancel", {"requestId": request_id})
    result = confined.response(request_id, timeout=TRICKLE_S)["result"]
    assert time.monotonic() - cancelled_at < 1.5
    assert result["complete"] is False and result["sizeBytes"] == 0


@pytest.mark.parametrize(
    ("path", "reason", "received"),
    [
        ("/trickle-head.gguf", "the server sent no complete response head within 0.5 s", 0),
        ("/trickle-chunk.gguf", "the server sent nothing for 0.5 s", 65536),  # a chunk-size line
    ],
)
def test_a_server_sending_a_byte_now_and_then_still_meets_the_idle_limit(
    server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str, reason: str, received: int
) -> None:
    monkeypatch.setattr(http_fetch, "_IDLE_S", 0.5)
    started = time.monotonic()
    with pytest.raises(DownloadFailed) as failed:
        download(server + path, str(tmp_path / "m.gguf"), None, _ignore, _never)
    assert failed.value.data == {"reason": reason, "bytes": received}
    assert time.monotonic() - started < TRICKLE_S / 2


# -- the Python client's time limit ----------------------------------------------


def test_the_python_client_gives_downloads_no_time_limit_unless_asked_and_then_cancels(
    server: str, models_dir: Path
) -> None:
    command = [sys.executable, "-m", "sidecar", "--models-dir", str(models_dir)]
    with SidecarClient(command, stderr=subprocess.DEVNULL, timeout=1.0) as client:
        client.request("initialize", {"protocolVersion": PROTOCOL_VERSION}, timeout=WAIT)
        slower = client.download_model(f"{server}/slower.gguf")  # about 2 s: longer than the client's 1 s
        assert slower["complete"] and (models_dir / "slower.gguf").read_bytes() == PAYLOAD
        with pytest.raises(TimeoutError):
            client.download_model(f"{server}/stall.gguf", timeout=0.5)
        # Cancelled and answered by then: the destination is free again (a busy one raises RemoteError).
        again = client.download_model(f"{server}/model.gguf", destination="stall.gguf", sha256=SHA256)
        assert again["complete"] and (models_dir / "stall.gguf").read_bytes() == PAYLOAD


# -- bodies whose end proves nothing, and ranges that do not fit ---------------


@pytest.mark.parametrize("path", ["/unsized.gguf", "/unsized-drop.gguf"])
def test_a_body_of_unknown_size_ended_by_closing_is_not_trusted(
    confined: RawSidecar, server: str, models_dir: Path, path: str
) -> None:
    error = confined.error("downloadModel", {"url": server + path})
    assert error["code"] == -32012 and error["data"]["reason"] == "size unknown"
    name = Path(path).name
    assert sorted(p.name for p in models_dir.iterdir()) == [f"{name}.part", f"{name}.part.json"]


def test_a_body_of_unknown_size_is_finished_when_its_sha256_matches(
    confined: RawSidecar, server: str, models_dir: Path
) -> None:
    result = confined.request("downloadModel", {"url": f"{server}/unsized.gguf", "sha256": SHA256})
    assert result["complete"] and (models_dir / "unsized.gguf").read_bytes() == PAYLOAD
    dropped = confined.error("downloadModel", {"url": f"{server}/unsized-drop.gguf", "sha256": SHA256})
    assert dropped["data"]["reason"] == "sha256 mismatch"
    assert not (models_dir / "unsized-drop.gguf").exists()


def test_a_properly_terminated_chunked_body_is_whole(
    confined: RawSidecar, server: str, models_dir: Path
) -> None:
    result = confined.request("downloadModel", {"url": f"{server}/chunked.gguf"})
    assert result["complete"] and result["sha256"] == SHA256
    assert (models_dir / "chunked.gguf").read_bytes() == PAYLOAD


def test_a_chunked_body_without_its_last_chunk_is_incomplete(
    confined: RawSidecar, server: str, models_dir: Path
) -> None:
    error = confined.error("downloadModel", {"url": f"{server}/chunked-drop.gguf"})
    assert error["code"] == -32012 and error["data"] == {"reason": "connection closed", "bytes": HALF}
    assert sorted(p.name for p in models_dir.iterdir()) == [
        "chunked-drop.gguf.part",
        "chunked-drop.gguf.part.json",
    ]


def test_a_chunked_body_is_not_measured_by_a_content_length_beside_it(
    confined: RawSidecar, server: str, models_dir: Path
) -> None:
    result = confined.request("downloadModel", {"url": f"{server}/chunked-length.gguf"})
    assert result["complete"] and (models_dir / "chunked-length.gguf").read_bytes() == PAYLOAD


@pytest.mark.parametrize(
    ("path", "reason"), [("/gzip.gguf", "unsupported encoding"), ("/two-lengths.gguf", "conflicting lengths")]
)
def test_a_body_that_is_not_the_plain_file_is_refused(
    confined: RawSidecar, server: str, models_dir: Path, path: str, reason: str
) -> None:
    error = confined.error("downloadModel", {"url": server + path})
    assert error["code"] == -32012 and error["data"] == {"reason": reason, "bytes": 0}
    assert not (models_dir / Path(path).name).exists()
    assert ModelServer.request_headers[0]["Accept-Encoding"] == "identity"


def test_a_range_answered_from_the_wrong_byte_is_not_appended(
    confined: RawSidecar, server: str, models_dir: Path
) -> None:
    url = f"{server}/etag/wrong-range.gguf"
    part = _leave_partial(models_dir, "wrong-range.gguf", PAYLOAD[:HALF], url, _etag(PAYLOAD))
    error = confined.error("downloadModel", {"url": url})
    assert error["code"] == -32012 and error["data"] == {"reason": "bad range", "bytes": HALF}
    assert part.read_bytes() == PAYLOAD[:HALF]
    assert not (models_dir / "wrong-range.gguf").exists()


def test_a_server_that_ignores_range_restarts_the_file(
    confined: RawSidecar, server: str, models_dir: Path
) -> None:
    url = f"{server}/etag/no-range.gguf"
    _leave_partial(models_dir, "no-range.gguf", b"x" * HALF, url, _etag(PAYLOAD))  # kept if appended to
    result = confined.request("downloadModel", {"url": url})
    assert result["complete"] and result["resumedFrom"] == 0 and result["sha256"] == SHA256
    assert (models_dir / "no-range.gguf").read_bytes() == PAYLOAD
    assert ModelServer.requests == ["/etag/no-range.gguf"]
    assert ModelServer.request_headers[0]["Range"] == f"bytes={HALF}-"


# -- redirects and proxies ------------------------------------------------------


@pytest.mark.parametrize("path", ["/redirect.gguf", "/hops/10"])
def test_redirects_to_http_are_followed(
    confined: RawSidecar, server: str, models_dir: Path, path: str
) -> None:
    result = confined.request("downloadModel", {"url": server + path, "destination": "m.gguf"})
    assert result["complete"] and (models_dir / "m.gguf").read_bytes() == PAYLOAD


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/redirect.gguf?to=ftp://127.0.0.1/model.gguf", "redirect to ftp://127.0.0.1/model.gguf refused"),
        ("/loop.gguf", "too many redirects"),
        ("/hops/11", "too many redirects"),
    ],
)
def test_redirects_elsewhere_or_without_end_are_refused(
    confined: RawSidecar, server: str, models_dir: Path, path: str, reason: str
) -> None:
    error = confined.error("downloadModel", {"url": server + path, "destination": "m.gguf"})
    assert error["code"] == -32012 and error["data"]["reason"].startswith(reason)
    assert list(models_dir.iterdir()) == []


def test_an_https_download_is_not_redirected_to_http(
    trusting: RawSidecar, tls_server: str, server: str, models_dir: Path
) -> None:
    asked = f"/redirect.gguf?to={server}/model.gguf"
    error = trusting.error("downloadModel", {"url": tls_server + asked, "destination": "m.gguf"})
    assert error["code"] == -32012
    assert error["data"]["reason"].startswith(f"redirect to {server}/model.gguf refused")
    assert ModelServer.requests == [asked]  # the plain-HTTP server was never asked
    assert list(models_dir.iterdir()) == []


def test_http_proxies_from_the_environment_are_used(server: str, models_dir: Path) -> None:
    proxied = {"HTTP_PROXY": server, "http_proxy": server, "NO_PROXY": "", "no_proxy": ""}
    for sidecar in _started(models_dir, proxied):
        result = sidecar.request("downloadModel", {"url": "http://models.invalid/model.gguf"})
        assert result["complete"] and (models_dir / "model.gguf").read_bytes() == PAYLOAD
    assert ModelServer.requests == ["http://models.invalid/model.gguf"]  # as a proxy is asked


# -- files already there ---------------------------------------------------------


@pytest.mark.parametrize("suffix", [".part", ".part.json"])
@pytest.mark.parametrize("link", [os.symlink, os.link], ids=["symlink", "hard link"])
def test_a_partial_file_that_is_a_link_is_refused(
    confined: RawSidecar,
    server: str,
    models_dir: Path,
    tmp_path: Path,
    link: Callable[[Path, Path], None],
    suffix: str,
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"not yours")
    link(victim, models_dir / f"model.gguf{suffix}")
    error = confined.error("downloadModel", {"url": f"{server}/model.gguf"})
    assert error["code"] == -32012 and error["data"] == {"reason": "unsafe partial file", "bytes": 0}
    assert victim.read_bytes() == b"not yours"
    assert not (models_dir / "model.gguf").exists() and ModelServer.requests == []


@pytest.mark.parametrize("sha256", [SHA256, None], ids=["sha256", "size"])
def test_the_same_file_already_there_is_kept(
    confined: RawSidecar, server: str, models_dir: Path, sha256: str | None
) -> None:
    target = models_dir / "model.gguf"
    target.write_bytes(PAYLOAD)
    before = target.stat()
    params = {"url": f"{server}/model.gguf", **({"sha256": sha256} if sha256 else {})}
    result = confined.request("downloadModel", params)
    assert result == {
        "modelPath": str(target),
        "sizeBytes": len(PAYLOAD),
        "sha256": SHA256,
        "resumedFrom": len(PAYLOAD),
        "complete": True,
    }
    assert (target.stat().st_ino, target.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert len(ModelServer.requests) == (0 if sha256 else 1)  # the sha256 needs no server
    assert not (models_dir / "model.gguf.part").exists()


@pytest.mark.parametrize(
    ("content", "sha256"),
    [(b"another model", None), (b"x" * len(PAYLOAD), SHA256), (b"x" * len(PAYLOAD), None)],
    ids=["other size", "other sha256", "same size: kept, only a sha256 could tell"],
)
def test_a_different_file_already_there_is_never_replaced(
    confined: RawSidecar, server: str, models_dir: Path, content: bytes, sha256: str | None
) -> None:
    target = models_dir / "model.gguf"
    target.write_bytes(content)
    params = {"url": f"{server}/model.gguf", **({"sha256": sha256} if sha256 else {})}
    if sha256 is None and len(content) == len(PAYLOAD):
        assert confined.request("downloadModel", params)["sha256"] != SHA256  # size is all it can check
    else:
        error = confined.error("downloadModel", params)
        assert error["code"] == -32012 and error["data"] == {"reason": "exists", "bytes": 0}
    assert target.read_bytes() == content
    assert [p.name for p in models_dir.iterdir()] == ["model.gguf"]


def test_a_cancel_stops_the_check_of_a_file_already_there(server: str, tmp_path: Path) -> None:
    (tmp_path / "m.gguf").write_bytes(PAYLOAD)  # hashing a file of several GB takes seconds
    outcome = download(f"{server}/model.gguf", str(tmp_path / "m.gguf"), SHA256, _ignore, lambda: True)
    assert not outcome.complete and outcome.sha256 is None


def test_a_file_that_takes_the_name_during_the_download_is_not_replaced(server: str, tmp_path: Path) -> None:
    target = tmp_path / "m.gguf"

    def someone_else_writes(_progress: Progress) -> None:
        target.write_bytes(b"theirs")

    with pytest.raises(DownloadFailed) as failed:
        download(f"{server}/model.gguf", str(target), SHA256, someone_else_writes, _never)
    assert failed.value.data == {"reason": "exists", "bytes": len(PAYLOAD)}
    assert target.read_bytes() == b"theirs"
    assert (tmp_path / "m.gguf.part").read_bytes() == PAYLOAD


# -- Windows paths -----------------------------------------------------------------


def test_a_path_on_another_drive_is_outside_not_an_internal_error() -> None:
    def windows(call: Callable[[ModelPaths], str]) -> str | Exception:
        return _as_on_windows(lambda: call(ModelPaths(["C:\\Models"])))

    assert isinstance(windows(lambda paths: paths.resolve("D:\\models\\m.gguf")), ModelPathNotAllowed)
    elsewhere = windows(lambda paths: paths.download_destination("D:\\m.gguf", "http://host/m.gguf"))
    assert isinstance(elsewhere, ModelPathNotAllowed)
    # Windows paths ignore case.
    assert windows(lambda paths: paths.resolve("c:\\models\\m.gguf")) == "c:\\models\\m.gguf"
    assert windows(lambda paths: paths.download_destination(None, "http://h/m.gguf")) == "C:\\Models\\m.gguf"


def _as_on_windows(call: Callable[[], str]) -> str | Exception:
    """What ``call`` returns or raises with os.path as on Windows (ntpath runs anywhere).

    Only around the call: pytest itself needs the real os.path to report.
    """
    with pytest.MonkeyPatch.context() as patch:
        for name in ("realpath", "join", "commonpath", "normcase"):
            patch.setattr(os.path, name, getattr(ntpath, name))
        try:
            return call()
        except Exception as exc:
            return exc


def _ignore(_progress: Progress) -> None:
    pass


def _never() -> bool:
    return False
