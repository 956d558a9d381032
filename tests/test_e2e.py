"""End to end: a real ``python -m sidecar`` and real llama.cpp on tiny generated models."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from .harness import RawSidecar
from .phases import exponential_grammar
from .tiny_model import LETTERS_FOREVER, write_tiny_model

GREEDY = {"temperature": 0, "seed": 1}
# A random model's own text depends on the CPU and the llama.cpp build (it may even be
# empty: control tokens and stray bytes show nothing). Where a test needs text, chunks or
# a stream that keeps running, this grammar gives one letter a token, without end.
LETTERS = {"grammar": LETTERS_FOREVER}


def _check_stream(chunks: list[dict[str, Any]], response: dict[str, Any]) -> dict[str, Any]:
    """Assert the stream invariants; return the response's result."""
    assert [chunk["index"] for chunk in chunks] == list(range(len(chunks)))
    assert [chunk["isFinal"] for chunk in chunks].count(True) == 1
    assert chunks[-1]["isFinal"]
    result: dict[str, Any] = response["result"]
    assert "".join(chunk["content"] for chunk in chunks) == result["text"]
    assert chunks[-1]["finishReason"] == result["finishReason"]
    assert chunks[-1]["usage"] == result["usage"]
    return result


def _rest(sidecar: RawSidecar) -> list[Any]:
    """Every message received and not yet taken (call once the process has exited)."""
    assert not sidecar.bad_lines  # then next_message fails only when none is left
    rest = []
    while True:
        try:
            rest.append(sidecar.next_message(timeout=0.1))
        except AssertionError:  # none left
            return rest


def test_handshake_reports_versions_and_capabilities(raw_sidecar: RawSidecar) -> None:
    result = raw_sidecar.initialize()
    assert result["protocolVersion"] == "1.2"
    assert result["serverInfo"]["name"] == "llama-sidecar"
    # The pinned version, with the local label that names the project's build (native/build_wheel.py).
    assert result["serverInfo"]["llamaCppPythonVersion"].split("+")[0] == "0.3.36"
    assert "promptStream" in result["capabilities"]["methods"]
    assert result["capabilities"]["maxLineBytes"] == 16 * 1024 * 1024


def test_requests_before_initialize_are_refused(raw_sidecar: RawSidecar) -> None:
    assert raw_sidecar.error("ping")["code"] == -32002
    raw_sidecar.initialize()
    assert raw_sidecar.request("ping") == {}


def test_unsupported_protocol_version_lists_supported(raw_sidecar: RawSidecar) -> None:
    error = raw_sidecar.error("initialize", {"protocolVersion": "2.0"})
    assert error["code"] == -32602
    assert error["data"] == {"supported": ["1.0", "1.1", "1.2"], "requested": "2.0"}


def test_load_list_unload(sidecar: RawSidecar, tiny_model: Path) -> None:
    info = sidecar.request("loadModel", {"modelPath": str(tiny_model), "contextSize": 300})
    assert info["modelId"] == "tiny"
    assert info["contextSize"] == 512  # rounded up to a multiple of 256
    assert info["trainContextSize"] == 2048
    assert info["architecture"] == "llama"
    assert info["chatTemplate"] is True
    assert info["sizeBytes"] == tiny_model.stat().st_size
    second = sidecar.request("loadModel", {"modelPath": str(tiny_model), "modelId": "other"})
    assert [m["modelId"] for m in sidecar.request("listModels")["models"]] == ["tiny", "other"]
    assert second["modelId"] == "other"
    assert sidecar.request("unloadModel", {"modelId": "tiny"}) == {"unloaded": True}
    assert sidecar.request("unloadModel", {"modelId": "tiny"}) == {"unloaded": False}
    assert [m["modelId"] for m in sidecar.request("listModels")["models"]] == ["other"]
    assert sidecar.request("unloadModel") == {"unloaded": True}
    assert sidecar.request("listModels") == {"models": []}


def test_same_file_and_options_loaded_twice_is_one_model(sidecar: RawSidecar, tiny_model: Path) -> None:
    first = sidecar.request("loadModel", {"modelPath": str(tiny_model)})
    again = sidecar.request("loadModel", {"modelPath": str(tiny_model)})
    assert again.pop("lastUsedAt") >= first.pop("lastUsedAt")
    assert again == first
    assert len(sidecar.request("listModels")["models"]) == 1


def test_prompt_returns_text_usage_and_timings(loaded: RawSidecar) -> None:
    result = loaded.request("prompt", {"prompt": "hello world", "maxTokens": 12, **GREEDY})
    assert result["finishReason"] == "length"
    assert result["usage"]["completionTokens"] == 12
    assert result["usage"]["promptTokens"] > 1
    assert result["timings"]["tokensPerSecond"] > 0
    assert result["timings"]["ttftMs"] >= result["timings"]["promptMs"] > 0


def test_greedy_prompt_is_deterministic_and_equals_joined_stream(loaded: RawSidecar) -> None:
    params = {"prompt": "hello world", "maxTokens": 40, **LETTERS, **GREEDY}
    whole = loaded.request("prompt", params)
    chunks, response = loaded.stream(params)
    result = _check_stream(chunks, response)
    assert result["text"] == whole["text"]
    assert len(chunks) > 2


def test_stream_chunks_are_valid_utf8_without_replacement_characters(loaded: RawSidecar) -> None:
    # The random model emits arbitrary byte tokens: split and invalid sequences are common.
    chunks, response = loaded.stream({"prompt": "日本 é", "maxTokens": 400, "temperature": 1.5, "seed": 7})
    result = _check_stream(chunks, response)
    for chunk in chunks:
        assert "\ufffd" not in chunk["content"]
        chunk["content"].encode("utf-8")  # raises on lone surrogates
    assert result["usage"]["completionTokens"] == 400


def _text(sidecar: RawSidecar, **params: Any) -> str:
    """The text of a short prompt to the latest loaded model, with these sampling params."""
    text: str = sidecar.request("prompt", {"prompt": "hello world", "maxTokens": 30, **params})["text"]
    return text


# Sampling at temperature 1 with every filter off: any token may come next.
SAMPLED = {"temperature": 1.0, "topK": 0, "topP": 1.0, "minP": 0.0}


def test_the_same_seed_samples_the_same_text_and_another_seed_another(loaded: RawSidecar) -> None:
    first = _text(loaded, **SAMPLED, seed=11)
    assert _text(loaded, **SAMPLED, seed=11) == first
    assert _text(loaded, **SAMPLED, seed=12) != first


def test_the_load_seed_is_used_when_a_prompt_gives_none(sidecar: RawSidecar, tiny_model: Path) -> None:
    sidecar.request("loadModel", {"modelPath": str(tiny_model), "seed": 11})
    assert _text(sidecar, **SAMPLED) == _text(sidecar, **SAMPLED, seed=11)
    assert _text(sidecar, **SAMPLED, seed=12) != _text(sidecar, **SAMPLED)  # the prompt's own seed wins
    # Loading the same file again returns the loaded model, with the new load's seed.
    sidecar.request("loadModel", {"modelPath": str(tiny_model), "seed": 12})
    assert _text(sidecar, **SAMPLED) == _text(sidecar, **SAMPLED, seed=12)


@pytest.mark.parametrize("narrowing", [{"topK": 1}, {"topP": 0.0}, {"minP": 1.0}], ids=str)
def test_a_filter_that_keeps_one_token_samples_the_greedy_text(
    loaded: RawSidecar, narrowing: dict[str, Any]
) -> None:
    greedy = _text(loaded, temperature=0)
    assert _text(loaded, **SAMPLED, seed=3) != greedy  # without the filter, this seed samples other text
    assert _text(loaded, **{**SAMPLED, **narrowing}, seed=3) == greedy


def test_a_repeat_penalty_changes_the_greedy_text(sidecar: RawSidecar, tmp_path: Path) -> None:
    # Whether a random model's greedy text repeats a token the penalty then steers off depends
    # on the build; with "a" pinned above "b" above all else it is known: a's 40 cut by 1.5 is
    # below b's 30, and once both are penalized a leads again (tests/test_tiny_model.py).
    path = write_tiny_model(tmp_path / "a-then-b.gguf", pinned_logits={"a": 40.0, "b": 30.0})
    sidecar.request("loadModel", {"modelPath": str(path)})
    assert _text(sidecar, temperature=0) == "a" * 30
    assert _text(sidecar, temperature=0, repeatPenalty=1.5) == "ab" + "a" * 28


def test_chat_messages_use_the_model_template(loaded: RawSidecar) -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    result = loaded.request("prompt", {"messages": messages, "maxTokens": 3, **GREEDY})
    raw = loaded.request("prompt", {"prompt": "hello", "maxTokens": 3, **GREEDY})
    # The template adds its markers: many more prompt tokens than the raw text.
    assert result["usage"]["promptTokens"] > raw["usage"]["promptTokens"] + 8


def test_end_of_generation_token_finishes_with_stop(sidecar: RawSidecar, eos_model: Path) -> None:
    sidecar.request("loadModel", {"modelPath": str(eos_model)})
    chunks, response = sidecar.stream({"prompt": "hello", "maxTokens": 50, **GREEDY})
    result = _check_stream(chunks, response)
    assert result == {**result, "text": "", "finishReason": "stop"}
    assert result["usage"]["completionTokens"] == 0
    assert len(chunks) == 1


def test_stop_string_ends_generation_and_is_not_emitted(loaded: RawSidecar) -> None:
    params = {"prompt": "hello world", "maxTokens": 60, **LETTERS, **GREEDY}
    text = loaded.request("prompt", params)["text"]
    stop = text[20:23]
    assert len(stop) == 3
    chunks, response = loaded.stream({**params, "stop": [stop]})
    result = _check_stream(chunks, response)
    assert result["finishReason"] == "stop"
    assert result["text"] == text[: text.index(stop)]


def test_cancel_mid_stream_takes_effect_within_one_token(loaded: RawSidecar) -> None:
    # Letters only: every token is one whole character, so every token is one chunk.
    params = {"prompt": "hello", "maxTokens": 2000, **LETTERS, **GREEDY}
    request_id = loaded.send_request("promptStream", params)
    first = loaded.next_message()
    assert first["method"] == "streamChunk" and not first["params"]["isFinal"]
    cancel_id = loaded.send_request("cancel", {"requestId": request_id})
    # The cancel flag is set before the cancel is answered: from then on the token
    # loop may finish the token it holds, and must stop at its next check.
    chunks = [first["params"]]
    before_answer = None
    while True:
        message = loaded.next_message()
        if message.get("method") == "streamChunk":
            chunks.append(message["params"])
        elif message["id"] == cancel_id:
            assert message["result"] == {"cancelled": True}
            before_answer = len(chunks)
        else:
            break
    result = _check_stream(chunks, message)
    assert result["finishReason"] == "cancelled"
    assert all(len(chunk["content"]) == 1 for chunk in chunks[:-1])  # one letter, one token
    assert before_answer is not None, "the cancel was answered after the stream ended"
    assert len(chunks) - 1 - before_answer <= 1, "more than one token's chunk after the cancel's answer"
    assert 0 < result["usage"]["completionTokens"] <= before_answer + 1
    assert loaded.request("cancel", {"requestId": request_id}) == {"cancelled": False}


def test_cancel_as_notification(loaded: RawSidecar) -> None:
    request_id = loaded.send_request("promptStream", {"prompt": "hello", **LETTERS, **GREEDY})
    loaded.next_message()
    loaded.send({"jsonrpc": "2.0", "method": "cancel", "params": {"requestId": request_id}})
    _chunks, response = loaded.collect_stream(request_id)
    assert response["result"]["finishReason"] == "cancelled"


def test_cancel_interrupts_prompt_processing(sidecar: RawSidecar, slow_model: Path) -> None:
    sidecar.request("loadModel", {"modelPath": str(slow_model), "contextSize": 4096})
    long_prompt = "hello world and the " * 150
    started = time.monotonic()
    full = sidecar.request("prompt", {"prompt": long_prompt, "maxTokens": 1, **GREEDY})
    uncancelled_ms = (time.monotonic() - started) * 1000
    assert full["timings"]["promptMs"] > 300, "the slow model must make prompt processing slow"

    # A different first token: nothing of the first prompt's cache can be reused.
    request_id = sidecar.send_request("promptStream", {"prompt": "x" + long_prompt, "maxTokens": 1, **GREEDY})
    time.sleep(0.1)  # let prompt processing begin
    cancel_sent = time.monotonic()
    sidecar.send_request("cancel", {"requestId": request_id})
    chunks, response = sidecar.collect_stream(request_id)
    cancel_ms = (time.monotonic() - cancel_sent) * 1000
    assert response["result"]["finishReason"] == "cancelled"
    assert response["result"]["usage"]["completionTokens"] == 0
    assert cancel_ms < min(uncancelled_ms / 2, 500)
    # The model stays usable after an interrupted decode.
    assert (
        sidecar.request("prompt", {"prompt": "hello", "maxTokens": 3, **GREEDY})["finishReason"] == "length"
    )


def test_two_streams_queue_in_arrival_order_and_ping_and_list_answer_meanwhile(loaded: RawSidecar) -> None:
    first = loaded.send_request("promptStream", {"prompt": "hello", "maxTokens": 300, **LETTERS, **GREEDY})
    second = loaded.send_request("promptStream", {"prompt": "world", "maxTokens": 5, **GREEDY})
    meanwhile = {loaded.send_request("ping"), loaded.send_request("listModels")}
    order: list[tuple[Any, bool]] = []
    responses: dict[Any, dict[str, Any]] = {}
    answered_at: dict[Any, int] = {}  # chunks received before each meanwhile request's answer
    while len(responses) < 2:
        message = loaded.next_message()
        if message.get("method") == "streamChunk":
            order.append((message["params"]["requestId"], message["params"]["isFinal"]))
        elif message["id"] in meanwhile:
            assert "result" in message, message
            answered_at[message["id"]] = len(order)
        else:
            responses[message["id"]] = message
    first_final = order.index((first, True))
    assert all(request_id == first for request_id, _ in order[: first_final + 1])
    assert all(request_id == second for request_id, _ in order[first_final + 1 :])
    assert set(answered_at) == meanwhile
    assert all(position < first_final for position in answered_at.values())
    assert responses[first]["result"]["usage"]["completionTokens"] == 300


def test_after_shutdown_requests_are_refused_and_notifications_get_nothing(
    loaded: RawSidecar, tiny_model: Path
) -> None:
    stream = loaded.send_request("promptStream", {"prompt": "hello", "maxTokens": 2000, **LETTERS, **GREEDY})
    assert loaded.next_message()["method"] == "streamChunk"
    # On a second model: a grammar whose set-up llama.cpp cannot interrupt (seconds at this
    # depth). The stop waits for it, then cuts it short, which leaves time for the lines below.
    loaded.request("loadModel", {"modelPath": str(tiny_model), "modelId": "stuck"})
    stuck = loaded.send_request(
        "promptStream", {"prompt": "hi", "modelId": "stuck", "grammar": exponential_grammar(31)}
    )
    time.sleep(0.2)  # let the set-up begin
    assert loaded.request("shutdown") is None
    stopped_at = time.monotonic()
    for request_id in (stream, "unknown"):
        loaded.send({"jsonrpc": "2.0", "method": "cancel", "params": {"requestId": request_id}})
    late = [loaded.send_request("ping"), loaded.send_request("cancel", {"requestId": stream})]
    for request_id in late:
        assert loaded.response(request_id)["error"]["code"] == -32007
    _chunks, response = loaded.collect_stream(stream)
    assert response["result"]["finishReason"] == "cancelled"
    # Cut short: its final chunk and a result all the same, with nothing generated.
    chunks, response = loaded.collect_stream(stuck)
    result = _check_stream(chunks, response)
    assert result["finishReason"] == "cancelled" and result["text"] == ""
    assert loaded.wait_exit() == 0
    assert time.monotonic() - stopped_at < 2.0
    loaded.stop()
    assert _rest(loaded) == []  # in particular no error with id null for the notifications


def test_cancel_of_a_queued_stream_never_runs_it(loaded: RawSidecar) -> None:
    running = loaded.send_request("promptStream", {"prompt": "hello", "maxTokens": 400, **GREEDY})
    queued = loaded.send_request("promptStream", {"prompt": "world", "maxTokens": 400, **GREEDY})
    assert loaded.request("cancel", {"requestId": queued}) == {"cancelled": True}
    chunks, response = loaded.collect_stream(queued)
    assert chunks == [chunks[-1]] and chunks[-1]["finishReason"] == "cancelled"
    assert response["result"]["usage"] == {"promptTokens": 0, "completionTokens": 0}
    # Answered at once, not when its turn came: the stream ahead is still running.
    ahead = [m["params"] for m in loaded.notifications("streamChunk") if m["params"]["requestId"] == running]
    assert not any(chunk["isFinal"] for chunk in ahead), "the cancelled stream was answered late"
    loaded.request("cancel", {"requestId": running})


def test_unknown_and_finished_cancel_ids(loaded: RawSidecar) -> None:
    assert loaded.request("cancel", {"requestId": "nope"}) == {"cancelled": False}
    done = loaded.send_request("prompt", {"prompt": "x", "maxTokens": 1})
    loaded.response(done)
    assert loaded.request("cancel", {"requestId": done}) == {"cancelled": False}


def test_prompt_over_the_context_is_refused_with_sizes(sidecar: RawSidecar, tiny_model: Path) -> None:
    sidecar.request("loadModel", {"modelPath": str(tiny_model), "contextSize": 256})
    chunks, response = sidecar.stream({"prompt": "hello " * 400})
    assert response["error"]["code"] == -32006
    assert response["error"]["data"]["contextSize"] == 256
    assert response["error"]["data"]["promptTokens"] > 256
    assert len(chunks) == 1 and chunks[0]["finishReason"] == "error"
    assert sidecar.request("prompt", {"prompt": "hello", "maxTokens": 2})["finishReason"] == "length"


def test_max_tokens_beyond_the_context_stops_at_the_context(sidecar: RawSidecar, tiny_model: Path) -> None:
    sidecar.request("loadModel", {"modelPath": str(tiny_model), "contextSize": 256})
    result = sidecar.request("prompt", {"prompt": "hello", "maxTokens": 5000, **GREEDY})
    assert result["finishReason"] == "length"
    assert result["usage"]["promptTokens"] + result["usage"]["completionTokens"] == 256


def test_model_errors(sidecar: RawSidecar, tmp_path: Path) -> None:
    assert sidecar.error("prompt", {"prompt": "hi"})["code"] == -32004
    missing = sidecar.error("loadModel", {"modelPath": str(tmp_path / "missing.gguf")})
    assert missing["code"] == -32001 and missing["data"] == {"modelPath": str(tmp_path / "missing.gguf")}
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"GGUF" + bytes(range(256)) * 4)
    failed = sidecar.error("loadModel", {"modelPath": str(garbage)})
    assert failed["code"] == -32003 and failed["data"]["reason"]
    assert sidecar.error("loadModel", {"modelPath": str(tmp_path)})["code"] == -32003
    assert sidecar.error("prompt", {"prompt": "hi", "modelId": "nope"})["code"] == -32005


def test_llama_cpp_reason_reaches_the_error(sidecar: RawSidecar, tiny_model: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(tiny_model.read_bytes()[:200_000])
    error = sidecar.error("loadModel", {"modelPath": str(truncated)})
    assert error["code"] == -32003
    assert "data is not within the file bounds" in error["data"]["reason"]
    assert sidecar.request("ping") == {}


def test_load_failure_leaves_loaded_models_working(loaded: RawSidecar, tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_text("not a model")
    assert loaded.error("loadModel", {"modelPath": str(bad)})["code"] == -32003
    assert loaded.request("prompt", {"prompt": "hi", "maxTokens": 2})["usage"]["completionTokens"] == 2


def test_default_model_path_resolves(sidecar: RawSidecar, default_model: str) -> None:
    info = sidecar.request("loadModel", {"modelPath": "default"})
    assert info["modelPath"] == default_model
    assert info["chatTemplate"] is True
