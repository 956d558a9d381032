"""The Python client: every protocol method, streams, progress, cancel, and what a dying sidecar does."""

from __future__ import annotations

import hashlib
import importlib.metadata
import itertools
import math
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from sidecar.client import CancelToken, RemoteError, SidecarClient, SidecarExited
from sidecar.errors import ModelFileNotFound
from sidecar.model_paths import INSTALL_HINT, default_model_path

from .harness import ROOT
from .tiny_model import LETTERS_FOREVER


@pytest.fixture
def client(tiny_model: Path) -> Iterator[SidecarClient]:
    client = SidecarClient(stderr=subprocess.DEVNULL, timeout=20)
    client.initialize()
    client.load_model(str(tiny_model))
    yield client
    client.close()


def test_prompt_stream_and_errors(client: SidecarClient) -> None:
    stream = client.prompt_stream("hello", maxTokens=10, temperature=0)
    chunks = list(stream)
    assert chunks[-1]["isFinal"] and stream.result()["usage"]["completionTokens"] == 10
    with pytest.raises(RemoteError) as raised:
        client.prompt("x", modelId="nope")
    assert raised.value.code == -32005 and raised.value.data == {"modelId": "nope"}
    failed = client.prompt_stream("x", maxTokens=0)
    with pytest.raises(RemoteError):
        list(failed)


def test_sessions_through_the_client(client: SidecarClient) -> None:
    session_id = client.create_session(systemPrompt="Be brief.")["sessionId"]
    first = client.prompt(sessionId=session_id, text="hi", maxTokens=3, temperature=0)
    stream = client.prompt_stream(sessionId=session_id, text="more", maxTokens=3, temperature=0)
    streamed = "".join(chunk["content"] for chunk in stream)
    history = client.get_session(session_id)["messages"]
    assert [m["content"] for m in history] == ["hi", first["text"], "more", streamed]
    assert client.reset_session(session_id)["messages"] == []
    restored = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert client.set_session_history(session_id, restored)["messages"] == restored
    assert client.get_session(session_id)["messages"] == restored
    assert client.close_session(session_id) is True
    with pytest.raises(RemoteError) as raised:
        client.prompt(sessionId=session_id, text="gone")
    assert raised.value.code == -32013


def test_a_killed_sidecar_fails_pending_calls_at_once(client: SidecarClient) -> None:
    # A chunk a token, until the context is full: the random model's own text may show nothing.
    stream = client.prompt_stream("hello", temperature=0, grammar=LETTERS_FOREVER)
    next(iter(stream))
    killed = time.monotonic()
    client.process.kill()
    with pytest.raises(SidecarExited):
        stream.result()
    assert time.monotonic() - killed < 1
    with pytest.raises(SidecarExited):
        client.ping()


def test_close_returns_the_exit_status(tiny_model: Path) -> None:
    client = SidecarClient(stderr=subprocess.DEVNULL)
    client.initialize()
    assert client.close() == 0


def test_missing_default_model_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> importlib.metadata.Distribution:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(ModelFileNotFound) as raised:
        default_model_path()
    assert INSTALL_HINT in raised.value.message


def test_every_protocol_method_has_a_client_method() -> None:
    methods = sorted(path.stem for path in (ROOT / "protocol" / "schema" / "methods").glob("*.json"))
    assert "loadModel" in methods and "downloadModel" in methods  # the glob found the schemas
    missing = [name for name in methods if not callable(getattr(SidecarClient, _snake(name), None))]
    assert missing == [], f"add a SidecarClient method for each of {missing}"


def _snake(method: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", method).lower()


def test_model_and_token_methods(client: SidecarClient, tiny_model: Path) -> None:
    tokens = client.tokenize("hello world", addBos=False)
    assert tokens and all(isinstance(token, int) for token in tokens)
    assert client.detokenize(tokens) == "hello world"
    assert client.tokenize("hello world")[1:] == tokens  # BOS first, as a raw prompt has it
    messages = [{"role": "user", "content": "hello"}]
    for counted, prompted in [
        (client.count_tokens("hello world"), client.prompt("hello world", maxTokens=1)),
        (client.count_tokens(messages=messages), client.prompt(messages=messages, maxTokens=1)),
    ]:
        assert counted == {"promptTokens": prompted["usage"]["promptTokens"], "contextSize": 2048}
    embedded = client.embed(["hello", "the world"])
    assert [len(vector) for vector in embedded["embeddings"]] == [64, 64]  # the tiny model's width
    assert all(math.isclose(math.hypot(*vector), 1, rel_tol=1e-4) for vector in embedded["embeddings"])
    assert embedded["promptTokens"] > 0
    inspected = client.inspect_model(str(tiny_model))
    assert inspected["modelPath"] == str(tiny_model.resolve())
    assert (inspected["architecture"], inspected["sizeBytes"]) == ("llama", tiny_model.stat().st_size)
    assert client.unload_model("nope") == {"unloaded": False}
    assert [model["modelId"] for model in client.list_models()] == ["tiny"]
    assert client.unload_model() == {"unloaded": True} and client.list_models() == []


def test_load_progress_reaches_the_callback(client: SidecarClient, tiny_model: Path) -> None:
    progress: list[dict[str, Any]] = []
    client.load_model(str(tiny_model), modelId="again", on_progress=progress.append)
    values = [update["progress"] for update in progress]
    assert len(values) > 2 and values[-1] == 1
    assert all(later > earlier for earlier, later in itertools.pairwise(values))
    assert len({update["requestId"] for update in progress}) == 1


def test_a_cancel_token_cancels_a_load_from_its_progress_callback(
    client: SidecarClient, slow_model: Path
) -> None:
    token = CancelToken()
    progress: list[float] = []

    def on_progress(update: dict[str, Any]) -> None:
        progress.append(update["progress"])
        token.cancel()  # on the reader thread: cancel never waits, so this cannot deadlock

    with pytest.raises(RemoteError) as raised:
        client.load_model(str(slow_model), useMmap=False, on_progress=on_progress, cancel=token)
    assert raised.value.code == -32800
    assert progress and progress[-1] != 1
    assert [model["modelId"] for model in client.list_models()] == ["tiny"]


def test_a_cancel_token_stops_a_stream_and_a_prompt(client: SidecarClient) -> None:
    token = CancelToken()
    # A chunk a token, until the context is full: the random model's own text may show nothing.
    stream = client.prompt_stream("hello", temperature=0, grammar=LETTERS_FOREVER, cancel=token)
    for _chunk in stream:
        token.cancel()
    assert stream.result()["finishReason"] == "cancelled"
    assert stream.result()["usage"]["completionTokens"] < 1000
    # A token cancelled before the call cancels it as soon as it is sent.
    assert client.prompt("hello", temperature=0, cancel=token)["finishReason"] == "cancelled"


def test_a_callback_that_raises_does_not_stop_the_client(
    client: SidecarClient, tiny_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(_update: dict[str, Any]) -> None:
        raise ValueError("a bug in the host")

    assert client.load_model(str(tiny_model), modelId="again", on_progress=broken)["modelId"] == "again"
    assert client.ping() == {}
    assert "a loadProgress callback raised" in caplog.text


PAYLOAD = bytes(range(256)) * 8192  # 2 MiB


class _ModelServer(BaseHTTPRequestHandler):
    """Serves PAYLOAD at any path; ``/slow…`` trickles it over about a second."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.send_response(200)
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        step = 32768 if self.path.startswith("/slow") else len(PAYLOAD)
        for offset in range(0, len(PAYLOAD), step):
            self.wfile.write(PAYLOAD[offset : offset + step])
            if step < len(PAYLOAD):
                time.sleep(0.02)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def model_server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _ModelServer)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_download_progress_and_a_cancel_from_another_thread(model_server: str, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "sidecar", "--models-dir", str(tmp_path)]
    with SidecarClient(command, stderr=subprocess.DEVNULL, timeout=20) as client:
        client.initialize()
        token, started = CancelToken(), threading.Event()
        progress: list[dict[str, Any]] = []

        def on_progress(update: dict[str, Any]) -> None:
            progress.append(update)
            started.set()

        def cancel_once_started() -> None:
            if started.wait(10):
                token.cancel()

        canceller = threading.Thread(target=cancel_once_started)
        canceller.start()
        partial = client.download_model(
            f"{model_server}/slow", destination="m.gguf", on_progress=on_progress, cancel=token
        )
        canceller.join()
        assert partial["complete"] is False and partial["sha256"] is None
        assert 0 < partial["sizeBytes"] < len(PAYLOAD) == progress[0]["total"]
        assert (tmp_path / "m.gguf.part").exists() and not (tmp_path / "m.gguf").exists()

        progress.clear()
        sha256 = hashlib.sha256(PAYLOAD).hexdigest()
        whole = client.download_model(
            f"{model_server}/fast", destination="m.gguf", sha256=sha256, on_progress=progress.append
        )
        assert whole["complete"] is True and whole["sha256"] == sha256
        assert progress[-1]["bytes"] == len(PAYLOAD) and (tmp_path / "m.gguf").read_bytes() == PAYLOAD
