"""Chat sessions on real llama.cpp: history, cached context, overflow, and their errors.

The cache claims are checked in llama-cpp-python's own log (it reports each
prompt's prefix-match hit on stderr), and the save/restore of a session's
context by comparing greedy replies with and without another session between
turns.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import pytest

from sidecar.engine.api import ChatMessage, EngineModel, LoadOptions, RenderedChat
from sidecar.engine.llamacpp import LlamaCppEngine
from sidecar.errors import ContextOverflow
from sidecar.sessions import Session, turn_prompt

from .harness import RawSidecar

GREEDY = {"temperature": 0, "seed": 1}
# Letters and spaces without end: the reply has a known shape and runs to maxTokens, however
# the random model's own text (which depends on the CPU and the llama.cpp build) would go.
LETTERS = "root ::= [a-z ] root"
PREFIX_HIT = re.compile(rb"Llama\.generate: (\d+) prefix-match hit, remaining (\d+) prompt tokens")


def _turn(sidecar: RawSidecar, session_id: str, text: str, max_tokens: int = 8) -> dict[str, Any]:
    result: dict[str, Any] = sidecar.request(
        "prompt", {"sessionId": session_id, "text": text, "maxTokens": max_tokens, **GREEDY}
    )
    return result


def _prefix_hits(sidecar: RawSidecar) -> list[tuple[int, int]]:
    """(tokens reused, tokens evaluated) of each prompt so far, from llama-cpp-python's log."""
    return [
        (int(match[1]), int(match[2]))
        for line in sidecar.stderr_lines
        if (match := PREFIX_HIT.search(line)) is not None
    ]


def test_turns_extend_the_history_and_evaluate_only_new_tokens(loaded: RawSidecar) -> None:
    session = loaded.request("createSession", {"systemPrompt": "You are terse."})
    assert session["messages"] == [] and session["droppedMessages"] == 0
    assert session["contextSize"] == 2048  # the model's
    replies, prompt_tokens, completion_tokens = [], [], []
    for text in ("hello", "and then?", "thanks"):
        # Letters only: the random model's replies are then valid text (not arbitrary bytes,
        # which the reply leaves out), yet generated a token at a time, as a real model may,
        # not as the text would tokenize.
        result = loaded.request(
            "prompt",
            {"sessionId": session["sessionId"], "text": text, "maxTokens": 8, "grammar": LETTERS, **GREEDY},
        )
        replies.append(result["text"])
        prompt_tokens.append(result["usage"]["promptTokens"])
        completion_tokens.append(result["usage"]["completionTokens"])
    history = loaded.request("getSession", {"sessionId": session["sessionId"]})
    assert history["systemPrompt"] == "You are terse."
    assert history["messages"] == [
        message
        for text, reply in zip(("hello", "and then?", "thanks"), replies, strict=True)
        for message in ({"role": "user", "content": text}, {"role": "assistant", "content": reply})
    ]
    assert prompt_tokens[0] < prompt_tokens[1] < prompt_tokens[2]
    loaded.request("ping")  # the log lines of the last turn are written before its response
    hits = _prefix_hits(loaded)
    # Turns 2 and 3 reuse everything the previous turn evaluated: its prompt and its reply
    # but the last token, which was generated and never fed back. The session keeps the
    # reply's own tokens, so a reply whose text would tokenize otherwise is reused too.
    assert len(hits) >= 2
    for (reused, evaluated), previous_prompt, previous_reply, total in zip(
        hits[-2:], prompt_tokens[:2], completion_tokens[:2], prompt_tokens[1:], strict=True
    ):
        assert reused == previous_prompt + previous_reply - 1
        assert reused + evaluated == total
        assert evaluated < total / 2


def test_switching_sessions_restores_each_ones_context(sidecar: RawSidecar, tiny_model: Path) -> None:
    def conversation(interleave: bool) -> list[str]:
        sidecar.request("loadModel", {"modelPath": str(tiny_model), "modelId": "tiny"})
        first = sidecar.request("createSession", {"systemPrompt": "one"})["sessionId"]
        second = sidecar.request("createSession", {"systemPrompt": "two"})["sessionId"]
        replies = [_turn(sidecar, first, "hello")["text"]]
        if interleave:
            _turn(sidecar, second, "something else entirely")
            sidecar.request("prompt", {"prompt": "a one-off prompt", "maxTokens": 4, **GREEDY})
        replies.append(_turn(sidecar, first, "go on")["text"])
        sidecar.request("unloadModel")
        return replies

    alone = conversation(interleave=False)
    hits_before = len(_prefix_hits(sidecar))
    interleaved = conversation(interleave=True)
    assert interleaved == alone  # the restored context is the one the session left
    sidecar.request("ping")
    last_reused, last_evaluated = _prefix_hits(sidecar)[-1]
    assert len(_prefix_hits(sidecar)) > hits_before
    assert last_evaluated < last_reused  # "go on" reused the restored history


def test_a_cancelled_turn_keeps_its_partial_reply(loaded: RawSidecar) -> None:
    session_id = loaded.request("createSession")["sessionId"]
    params = {"sessionId": session_id, "text": "tell me a story", "maxTokens": 400, "grammar": LETTERS}
    request_id = loaded.send_request("promptStream", {**params, **GREEDY})
    first = loaded.next_message()
    assert first["method"] == "streamChunk"
    loaded.send({"jsonrpc": "2.0", "method": "cancel", "params": {"requestId": request_id}})
    chunks, response = loaded.collect_stream(request_id)
    assert response["result"]["finishReason"] == "cancelled"
    streamed = first["params"]["content"] + "".join(chunk["content"] for chunk in chunks)
    assert streamed == response["result"]["text"]
    messages = loaded.request("getSession", {"sessionId": session_id})["messages"]
    assert messages == [
        {"role": "user", "content": "tell me a story"},
        {"role": "assistant", "content": streamed},
    ]


def test_a_long_chat_drops_its_oldest_turns_instead_of_failing(loaded: RawSidecar) -> None:
    session = loaded.request("createSession", {"systemPrompt": "keep me", "contextSize": 128})
    for number in range(12):
        result = _turn(loaded, session["sessionId"], f"message number {number}", max_tokens=16)
        assert result["usage"]["promptTokens"] + result["usage"]["completionTokens"] <= 128
    info = loaded.request("getSession", {"sessionId": session["sessionId"]})
    assert info["droppedMessages"] > 0
    assert info["systemPrompt"] == "keep me"
    assert info["messages"][0]["role"] == "user"  # dropped a turn with its reply
    assert info["messages"][-2] == {"role": "user", "content": "message number 11"}
    assert len(info["messages"]) + info["droppedMessages"] == 24


def test_a_message_that_cannot_fit_is_refused_and_the_history_kept(loaded: RawSidecar) -> None:
    session_id = loaded.request("createSession", {"contextSize": 64})["sessionId"]
    _turn(loaded, session_id, "hi", max_tokens=4)
    error = loaded.error("prompt", {"sessionId": session_id, "text": "word " * 200, "maxTokens": 4})
    assert error["code"] == -32006
    assert error["data"]["contextSize"] == 64
    assert len(loaded.request("getSession", {"sessionId": session_id})["messages"]) == 2


def test_history_can_be_set_reset_and_the_session_closed(loaded: RawSidecar) -> None:
    session_id = loaded.request("createSession", {"systemPrompt": "s"})["sessionId"]
    saved = [{"role": "user", "content": "earlier"}, {"role": "assistant", "content": "reply"}]
    assert (
        loaded.request("setSessionHistory", {"sessionId": session_id, "messages": saved})["messages"] == saved
    )
    result = _turn(loaded, session_id, "now")
    assert loaded.request("getSession", {"sessionId": session_id})["messages"] == [
        *saved,
        {"role": "user", "content": "now"},
        {"role": "assistant", "content": result["text"]},
    ]
    reset = loaded.request("resetSession", {"sessionId": session_id})
    assert reset["messages"] == [] and reset["systemPrompt"] == "s"
    assert loaded.request("listModels")["models"][0]["sessions"] == [session_id]
    assert loaded.request("closeSession", {"sessionId": session_id}) == {"closed": True}
    assert loaded.request("closeSession", {"sessionId": session_id}) == {"closed": False}
    assert loaded.request("listModels")["models"][0]["sessions"] == []
    error = loaded.error("prompt", {"sessionId": session_id, "text": "hello?"})
    assert error == {"code": -32013, "message": error["message"], "data": {"sessionId": session_id}}


def test_a_reset_queued_behind_a_turn_applies_after_it(loaded: RawSidecar) -> None:
    session_id = loaded.request("createSession")["sessionId"]
    turn = loaded.send_request("prompt", {"sessionId": session_id, "text": "first", "maxTokens": 50})
    reset = loaded.send_request("resetSession", {"sessionId": session_id})
    assert loaded.response(turn)["result"]["finishReason"] == "length"
    assert loaded.response(reset)["result"]["messages"] == []
    # Applied at once, the reset would have been undone by the turn ending after it.
    assert loaded.request("getSession", {"sessionId": session_id})["messages"] == []


def test_a_session_outlives_an_unload_of_its_model(loaded: RawSidecar, tiny_model: Path) -> None:
    session_id = loaded.request("createSession")["sessionId"]
    _turn(loaded, session_id, "before")
    loaded.request("unloadModel", {"modelId": "tiny"})
    error = loaded.error("prompt", {"sessionId": session_id, "text": "during"})
    assert error["code"] == -32005 and error["data"] == {"modelId": "tiny"}
    loaded.request("loadModel", {"modelPath": str(tiny_model), "modelId": "tiny"})
    _turn(loaded, session_id, "after")
    contents = [m["content"] for m in loaded.request("getSession", {"sessionId": session_id})["messages"]]
    assert contents[0::2] == ["before", "after"]


def test_session_params_are_checked(loaded: RawSidecar) -> None:
    session_id = loaded.request("createSession")["sessionId"]
    both = loaded.error("prompt", {"sessionId": session_id, "text": "x", "modelId": "tiny"})
    assert both["code"] == -32602
    no_text = loaded.error("prompt", {"sessionId": session_id})
    assert no_text["code"] == -32602
    too_big = loaded.error("createSession", {"contextSize": 100_000})
    assert too_big["code"] == -32602 and too_big["data"] == {"field": "contextSize"}
    bad_role = loaded.error(
        "setSessionHistory", {"sessionId": session_id, "messages": [{"role": "system", "content": "x"}]}
    )
    assert bad_role["code"] == -32602
    assert loaded.error("getSession", {"sessionId": "nope"})["code"] == -32013
    assert loaded.error("createSession", {"modelId": "nope"})["code"] == -32005


def test_sessions_need_a_chat_template(sidecar: RawSidecar, tmp_path: Path) -> None:
    from .tiny_model import write_tiny_model

    plain = write_tiny_model(tmp_path / "plain.gguf", chat_template=None)
    sidecar.request("loadModel", {"modelPath": str(plain)})
    error = sidecar.error("createSession")
    assert error["code"] == -32602 and error["data"] == {"field": "modelId"}


@pytest.fixture(scope="module")
def tiny_engine_model(tiny_model: Path) -> Iterator[EngineModel]:
    """The tiny model loaded in this process, for building turn prompts directly."""
    model = LlamaCppEngine().load(str(tiny_model), LoadOptions(context_size=2048, threads=1))
    yield model
    model.close()


class _CountingRenders:
    """An engine model that counts the conversations it renders."""

    def __init__(self, model: EngineModel) -> None:
        self.model, self.renders = model, 0

    def render_chat(self, messages: Sequence[ChatMessage]) -> RenderedChat:
        self.renders += 1
        return self.model.render_chat(messages)

    def tokenize(self, text: str, **options: Any) -> list[int]:
        return self.model.tokenize(text, **options)


def _dropped_one_turn_at_a_time(
    model: EngineModel, session: Session, text: str, reserve: int
) -> tuple[int, int]:
    """Messages dropped and prompt tokens, as the first implementation found them (a render per drop)."""
    system = [ChatMessage("system", session.system_prompt)] if session.system_prompt is not None else []

    def size(history: tuple[ChatMessage, ...]) -> int:
        rendered = model.render_chat([*system, *history, ChatMessage("user", text)])
        return len(model.tokenize(rendered.text, add_bos=rendered.add_bos))

    history, limit = session.messages, session.context_size - reserve
    if size(history) <= limit:
        return 0, size(history)
    while history and size(history) > min(limit, session.context_size // 2):
        history = history[next((i for i, m in enumerate(history) if i and m.role == "user"), len(history)) :]
    return len(session.messages) - len(history), size(history)


def _random_history(rng: random.Random, length: int) -> tuple[ChatMessage, ...]:
    """Mostly alternating turns of random lengths; now and then two of a role in a row."""
    role = rng.choice(("user", "assistant"))
    history = []
    for _ in range(length):
        history.append(
            ChatMessage(role, " ".join(rng.choices(("hello", "world", "the", "x"), k=rng.randint(0, 12))))
        )
        if rng.random() > 0.2:
            role = "assistant" if role == "user" else "user"
    return tuple(history)


def test_turns_are_dropped_as_one_at_a_time_would_but_with_few_renders(
    tiny_engine_model: EngineModel,
) -> None:
    rng = random.Random(6)
    for case in range(60):
        context_size = rng.choice((64, 128, 256, 512))
        session = Session(f"s{case}", "tiny", rng.choice((None, "be brief")), context_size)
        session.messages = _random_history(rng, rng.randint(0, rng.choice((8, 300))))
        text, reserve = "x " * rng.choice((1, 5, 20, 300)), rng.randint(0, context_size // 2)
        dropped, tokens = _dropped_one_turn_at_a_time(tiny_engine_model, session, text, reserve)
        counting = _CountingRenders(tiny_engine_model)
        if tokens > context_size - reserve:
            with pytest.raises(ContextOverflow):
                turn_prompt(cast(EngineModel, counting), session, text, reserve)
        else:
            turn = turn_prompt(cast(EngineModel, counting), session, text, reserve)
            assert (turn.dropped, len(turn.tokens)) == (dropped, tokens), case
            assert turn.history == session.messages[dropped:]
        turns = sum(1 for i, m in enumerate(session.messages) if not i or m.role == "user")
        assert counting.renders <= 2 * turns.bit_length() + 2, (case, turns, counting.renders)


def test_a_turn_after_a_history_of_thousands_of_messages_is_quick(loaded: RawSidecar) -> None:
    # Dropping one turn at a time rendered and tokenized the whole history once per turn:
    # 4,000 messages took two minutes, with no way to cancel.
    session_id = loaded.request("createSession", {"contextSize": 64})["sessionId"]
    history = [{"role": ("user", "assistant")[i % 2], "content": "hi"} for i in range(20_000)]
    loaded.request("setSessionHistory", {"sessionId": session_id, "messages": history})
    started = time.monotonic()
    _turn(loaded, session_id, "hello", max_tokens=2)
    assert time.monotonic() - started < 2.0
    info = loaded.request("getSession", {"sessionId": session_id})
    assert info["droppedMessages"] + len(info["messages"]) == 20_002
    assert info["messages"][-2] == {"role": "user", "content": "hello"}
