"""The Python client: calls, streams, and what a dying sidecar does to them."""

from __future__ import annotations

import importlib.metadata
import subprocess
import time
from pathlib import Path

import pytest

from sidecar.client import RemoteError, SidecarClient, SidecarExited
from sidecar.errors import ModelFileNotFound
from sidecar.model_paths import INSTALL_HINT, default_model_path


@pytest.fixture
def client(tiny_model: Path) -> SidecarClient:
    client = SidecarClient(stderr=subprocess.DEVNULL, timeout=20)
    client.initialize()
    client.load_model(str(tiny_model))
    yield client  # type: ignore[misc]
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
    history = client.request("getSession", {"sessionId": session_id})["messages"]
    assert [m["content"] for m in history] == ["hi", first["text"], "more", streamed]
    assert client.close_session(session_id) is True
    with pytest.raises(RemoteError) as raised:
        client.prompt(sessionId=session_id, text="gone")
    assert raised.value.code == -32013


def test_a_killed_sidecar_fails_pending_calls_at_once(client: SidecarClient) -> None:
    stream = client.prompt_stream("hello", temperature=0)
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
