"""Chat templates are the model file's code: what a hostile or broken one can and cannot do."""

from __future__ import annotations

from pathlib import Path

import pytest

from .harness import RawSidecar
from .tiny_model import CHAT_TEMPLATE, write_tiny_model

SECRET = "PROMPTSECRET"


def _load_with_template(sidecar: RawSidecar, tmp_path: Path, template: str) -> dict[str, object]:
    path = write_tiny_model(tmp_path / "templated.gguf", chat_template=template)
    result: dict[str, object] = sidecar.request("loadModel", {"modelPath": str(path)})
    return result


def _chat(sidecar: RawSidecar) -> dict[str, object]:
    return sidecar.error("prompt", {"messages": [{"role": "user", "content": SECRET}], "maxTokens": 2})


@pytest.mark.parametrize(
    "template",
    [
        # Real templates refuse conversations this way ("roles must alternate", …).
        "{{ raise_exception('refused: ' + messages[0]['content']) }}",
        "{% for i in range(10**9) %}{% endfor %}",  # beyond the sandbox's range limit
        "{{ messages[0]['content'] + 1 }}",  # a TypeError in the template's own logic
    ],
    ids=["raise_exception", "huge-range", "type-error"],
)
def test_a_template_that_fails_refuses_the_messages_and_keeps_them_out_of_the_log(
    sidecar: RawSidecar, tmp_path: Path, template: str
) -> None:
    _load_with_template(sidecar, tmp_path, template)
    error = _chat(sidecar)
    assert error["code"] == -32602 and error["data"] == {"field": "messages"}, error
    assert sidecar.request("ping") == {}
    sidecar.stop()
    assert SECRET not in b"".join(sidecar.stderr_lines).decode("utf-8", "replace")


def test_a_template_cannot_reach_python_internals(sidecar: RawSidecar, tmp_path: Path) -> None:
    witness = tmp_path / "escaped"
    escape = f"{{{{ cycler.__init__.__globals__.os.system('touch {witness}') }}}}"
    _load_with_template(sidecar, tmp_path, escape + CHAT_TEMPLATE)
    error = _chat(sidecar)
    assert error["code"] == -32602 and "unsafe" in error["message"], error
    assert not witness.exists()


def test_a_template_that_does_not_compile_fails_the_load(sidecar: RawSidecar, tmp_path: Path) -> None:
    path = write_tiny_model(tmp_path / "broken.gguf", chat_template="{% for m in messages %}")
    error = sidecar.error("loadModel", {"modelPath": str(path)})
    assert error["code"] == -32003 and "chat template does not compile" in error["data"]["reason"], error
    assert sidecar.request("ping") == {}


def test_a_session_turn_the_template_refuses_names_the_text(sidecar: RawSidecar, tmp_path: Path) -> None:
    refusing = "{% if 'forbidden' in messages[-1]['content'] %}{{ raise_exception('no') }}{% endif %}"
    _load_with_template(sidecar, tmp_path, refusing + CHAT_TEMPLATE)
    session = sidecar.request("createSession", {})["sessionId"]
    error = sidecar.error("prompt", {"sessionId": session, "text": "forbidden", "maxTokens": 2})
    assert error["code"] == -32602 and error["data"] == {"field": "text"}, error
    # The grammar makes the random model's reply known: its text depends on the CPU and build.
    turn = {"sessionId": session, "text": "fine", "maxTokens": 4, "grammar": 'root ::= "ok"'}
    assert sidecar.request("prompt", turn)["text"] == "ok"
    assert sidecar.request("getSession", {"sessionId": session})["messages"] == [
        {"role": "user", "content": "fine"},
        {"role": "assistant", "content": "ok"},
    ]
