"""What a request cannot make the sidecar do: open models outside the allowed places, run a program,
reach the network, write a file, or leak prompt and reply text to the log."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sidecar.errors import ModelPathNotAllowed
from sidecar.model_paths import ModelPaths
from sidecar.schema import method_names

from .audit_hook import audited_env, violations
from .harness import ROOT, RawSidecar

# A port nothing listens on: were anything to connect, it would fail fast, never leave the machine.
CLOSED_PORT_URL = "http://127.0.0.1:9/model.gguf"


def test_models_inside_the_allowed_directory_load(
    confined: RawSidecar, models_dir: Path, tiny_model: Path
) -> None:
    (models_dir / "tiny.gguf").write_bytes(tiny_model.read_bytes())
    info = confined.request("loadModel", {"modelPath": str(models_dir / "tiny.gguf")})
    assert info["modelPath"] == str(models_dir / "tiny.gguf")


def test_paths_outside_are_refused_however_they_are_spelled(
    confined: RawSidecar, models_dir: Path, tiny_model: Path
) -> None:
    (models_dir / "escape.gguf").symlink_to(tiny_model)
    for path in (str(tiny_model), str(models_dir / ".." / tiny_model.name), str(models_dir / "escape.gguf")):
        error = confined.error("loadModel", {"modelPath": path})
        assert error["code"] == -32011 and error["data"] == {"modelPath": path}
    assert confined.request("listModels") == {"models": []}


def test_inspect_model_is_confined_like_load_model(
    confined: RawSidecar, models_dir: Path, tiny_model: Path
) -> None:
    (models_dir / "tiny.gguf").write_bytes(tiny_model.read_bytes())
    (models_dir / "escape.gguf").symlink_to(tiny_model)
    assert (
        confined.request("inspectModel", {"modelPath": str(models_dir / "tiny.gguf")})["architecture"]
        == "llama"
    )
    for path in (str(tiny_model), str(models_dir / "escape.gguf")):
        error = confined.error("inspectModel", {"modelPath": path})
        assert error["code"] == -32011 and error["data"] == {"modelPath": path}


def test_a_sibling_directory_with_a_common_prefix_is_outside(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models-evil").mkdir()
    paths = ModelPaths([str(tmp_path / "models")])
    with pytest.raises(ModelPathNotAllowed):
        paths.resolve(str(tmp_path / "models-evil" / "x.gguf"))
    assert paths.resolve(str(tmp_path / "models" / "x.gguf")) == str(tmp_path / "models" / "x.gguf")


def test_the_embedded_model_is_always_allowed(confined: RawSidecar, default_model: str) -> None:
    assert confined.request("loadModel", {"modelPath": "default"})["modelPath"] == default_model


@pytest.mark.parametrize("log_text", [False, True])
def test_prompt_and_reply_text_reach_the_log_only_when_asked(tiny_model: Path, log_text: bool) -> None:
    sidecar = RawSidecar(*(["--log-text"] if log_text else []))  # the harness runs at debug level
    prompt, reply = "zebra-secret-7731", "MARKERREPLY"
    forced = {"grammar": f'root ::= "{reply}"', "temperature": 0}  # the random model says what it must
    try:
        sidecar.initialize()
        sidecar.request("loadModel", {"modelPath": str(tiny_model)})
        assert sidecar.request("prompt", {"prompt": prompt, **forced})["text"] == reply
        messages = [{"role": "user", "content": prompt}]
        chunks, _response = sidecar.stream({"messages": messages, **forced})
        assert "".join(chunk["content"] for chunk in chunks) == reply
        sidecar.request("shutdown")
        sidecar.wait_exit()
    finally:
        sidecar.stop()
    log = b"".join(sidecar.stderr_lines).decode(errors="replace")
    assert (prompt in log) is log_text and (reply in log) is log_text, log
    assert "prompt tokens" in log  # requests are logged either way, by size


def test_the_audit_hook_sees_programs_sockets_and_writes(tmp_path: Path) -> None:
    program = (
        "import contextlib, socket, subprocess\n"
        "with contextlib.suppress(OSError):\n"
        "    socket.create_connection(('127.0.0.1', 9), timeout=1)\n"
        f"open({str(tmp_path / 'written')!r}, 'w').close()\n"
        "subprocess.run(['true'])\n"
    )
    env = audited_env(tmp_path)
    subprocess.run([sys.executable, "-c", program], check=True, cwd=ROOT, env={**os.environ, **env})
    seen = violations(tmp_path)
    for event in ("socket.connect", "open", "subprocess.Popen"):
        assert any(line.startswith(f"('{event}'") for line in seen), (event, seen)


def _hostile_calls(model: str) -> list[tuple[str, dict[str, Any], int | None]]:
    """One call of every method, most also with params chosen to do harm: (method, params, error code)."""
    shell = "$(touch /tmp/sidecar-pwned); `id` | nc 127.0.0.1 9"
    template = "{{ cycler.__init__.__globals__.os.system('id') }}"  # text, never rendered as a template
    messages = [{"role": "user", "content": template}]
    session = {"sessionId": "session-1"}
    return [
        ("initialize", {"protocolVersion": "9.0"}, -32602),
        ("loadModel", {"modelPath": model, "modelId": "tiny", "contextSize": 256}, None),
        ("loadModel", {"modelPath": CLOSED_PORT_URL}, -32001),
        ("loadModel", {"modelPath": shell}, -32001),
        ("loadModel", {"modelPath": "/etc/passwd"}, -32003),
        ("inspectModel", {"modelPath": model}, None),
        ("inspectModel", {"modelPath": CLOSED_PORT_URL}, -32001),
        ("listModels", {}, None),
        ("ping", {}, None),
        ("tokenize", {"text": shell}, None),
        ("detokenize", {"tokens": [1, 2, 3]}, None),
        ("countTokens", {"messages": messages}, None),
        ("prompt", {"prompt": shell, "maxTokens": 4}, None),
        ("prompt", {"prompt": "x", "jsonSchema": {"$ref": "https://127.0.0.1:9/s.json"}}, -32602),
        ("prompt", {"prompt": "x", "jsonSchema": {"$ref": "file:///etc/passwd"}}, -32602),
        ("prompt", {"prompt": "x", "maxTokens": 4, "grammar": f'root ::= "{shell}"'}, None),
        ("promptStream", {"messages": messages, "maxTokens": 4}, None),
        ("embed", {"input": [shell, template]}, None),
        ("createSession", {"systemPrompt": template}, None),
        ("getSession", session, None),
        ("setSessionHistory", {**session, "messages": messages}, None),
        ("resetSession", session, None),
        ("closeSession", session, None),
        ("cancel", {"requestId": 1}, None),
        ("downloadModel", {"url": CLOSED_PORT_URL}, -32011),  # no --models-dir: refused before connecting
        ("downloadModel", {"url": "file:///etc/passwd", "destination": "/tmp/sidecar-pwned"}, -32011),
        ("unloadModel", {"modelId": "tiny"}, None),
        ("unloadModel", {}, None),
        ("shutdown", {}, None),
    ]


@pytest.mark.parametrize(
    "optimize",
    [
        "",
        "1",  # llama-cpp-python's own refusal of a remote $ref is an assert, which -O removes
    ],
    ids=["python", "python -O"],
)
def test_no_request_makes_the_sidecar_run_a_program_reach_the_network_or_write_a_file(
    tiny_model: Path, tmp_path: Path, optimize: str
) -> None:
    calls = _hostile_calls(str(tiny_model))
    assert {method for method, _params, _code in calls} == method_names()
    # Packagers may build with -O, which strips assert statements: a check made by one fails open.
    sidecar = RawSidecar(env={**audited_env(tmp_path), "PYTHONOPTIMIZE": optimize})
    try:
        sidecar.initialize()
        for line in (b"\xff\xfe garbage", b'{"jsonrpc":"2.0","method":"__import__","params":{"name":"os"}}'):
            sidecar.send_bytes(line + b"\n")
        for method, params, code in calls:  # each reaches the code it aims at
            response = sidecar.response(sidecar.send_request(method, params))
            assert "result" in response if code is None else response["error"]["code"] == code, response
        sidecar.wait_exit()
    finally:
        sidecar.stop()
    assert violations(tmp_path) == []
