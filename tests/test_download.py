"""downloadModel against a local HTTP server on 127.0.0.1 (no internet here, none needed)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from .harness import RawSidecar

PAYLOAD = bytes(range(256)) * 8192  # 2 MiB: two read chunks, so progress and cancel have room
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()


class ModelServer(BaseHTTPRequestHandler):
    """Serves PAYLOAD at /model.gguf with HTTP Range support.

    ``/drop.gguf`` promises the whole file but closes the connection halfway the
    first time it is asked for the start; ``/slow.gguf`` trickles it out.
    """

    drops: set[str] = set()

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        start = int(self.headers.get("Range", "bytes=0-").removeprefix("bytes=").rstrip("-") or 0)
        if start >= len(PAYLOAD):  # as real servers do: nothing is left in that range
            self.send_response(416)
            self.end_headers()
            return
        body = PAYLOAD[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path == "/missing.gguf":
            return
        if self.path == "/drop.gguf" and start == 0 and self.path not in self.drops:
            self.drops.add(self.path)
            self.wfile.write(body[: len(body) // 2])
            return  # the handler ends: the connection closes short of Content-Length
        step = 65536 if self.path == "/slow.gguf" else len(body)
        for offset in range(0, len(body), step):
            self.wfile.write(body[offset : offset + step])
            if self.path == "/slow.gguf":
                threading.Event().wait(0.02)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    ModelServer.drops = set()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), ModelServer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


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


def test_a_dropped_connection_leaves_a_partial_file_that_the_next_try_resumes(
    confined: RawSidecar, server: str, models_dir: Path
) -> None:
    params = {"url": f"{server}/drop.gguf", "sha256": SHA256}
    failed = confined.error("downloadModel", params)
    assert failed["code"] == -32012 and failed["data"]["bytes"] == len(PAYLOAD) // 2
    assert not (models_dir / "drop.gguf").exists()  # never half a file under the final name
    assert (models_dir / "drop.gguf.part").stat().st_size == len(PAYLOAD) // 2
    resumed = confined.request("downloadModel", params)
    assert resumed["resumedFrom"] == len(PAYLOAD) // 2 and resumed["sha256"] == SHA256
    assert (models_dir / "drop.gguf").read_bytes() == PAYLOAD


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
        ({"url": "{server}/missing.gguf", "sha256": SHA256}, -32012),
    ],
)
def test_refused_and_failed_downloads(
    confined: RawSidecar, server: str, models_dir: Path, params: dict[str, str], code: int
) -> None:
    filled = {key: value.replace("{server}", server) for key, value in params.items()}
    assert confined.error("downloadModel", filled)["code"] == code
    assert not any(path.suffix == ".gguf" for path in models_dir.iterdir())


def test_downloads_need_a_models_directory(sidecar: RawSidecar, server: str) -> None:
    assert sidecar.error("downloadModel", {"url": f"{server}/model.gguf"})["code"] == -32011


def test_a_complete_partial_file_is_finished_not_refetched(
    confined: RawSidecar, server: str, models_dir: Path
) -> None:
    (models_dir / "model.gguf.part").write_bytes(PAYLOAD)  # e.g. a cancel that came after the last byte
    result = confined.request("downloadModel", {"url": f"{server}/model.gguf", "sha256": SHA256})
    assert result["complete"] and result["resumedFrom"] == len(PAYLOAD)
    assert (models_dir / "model.gguf").read_bytes() == PAYLOAD


def test_one_download_per_destination_at_a_time(confined: RawSidecar, server: str) -> None:
    first = confined.send_request("downloadModel", {"url": f"{server}/slow.gguf"})
    assert confined.next_message()["method"] == "downloadProgress"  # the first one is under way
    second = confined.error("downloadModel", {"url": f"{server}/slow.gguf"})
    assert second["code"] == -32012 and second["data"]["reason"] == "busy"
    assert confined.response(first)["result"]["complete"]
