"""Property-based fuzzing of a running sidecar over its real stdio.

Random bytes, random JSON and random JSON-RPC shapes (real and made-up method
names, real and made-up params) are interleaved with real ``promptStream`` and
``cancel`` traffic on the tiny model. After every example and at the end:
the process is alive, every stdout line was a schema-valid message (the
harness checks each one), every request with an id got exactly one response,
and every stream ended with exactly one final chunk.

``SIDECAR_FUZZ_EXAMPLES`` sets the number of examples (default 250, about
12,000 messages); raise it for a soak run.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from .harness import RawSidecar

EXAMPLES = int(os.environ.get("SIDECAR_FUZZ_EXAMPLES", "250"))
# shutdown would end the run; unloadModel is fuzzed through made-up ids only.
METHODS = [
    "initialize",
    "loadModel",
    "listModels",
    "prompt",
    "promptStream",
    "cancel",
    "ping",
    "createSession",
    "getSession",
    "resetSession",
    "setSessionHistory",
    "closeSession",
]
# Opened before the fuzzing starts: fuzzed requests name it, and may prompt, reset or close it.
LIVE_SESSION = "session-1"
PARAM_NAMES = [
    "modelPath",
    "modelId",
    "prompt",
    "messages",
    "maxTokens",
    "temperature",
    "topK",
    "stop",
    "requestId",
    "seed",
    "sessionId",
    "text",
    "systemPrompt",
    "contextSize",
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


class Fuzzer:
    """Sends fuzz messages, tags every request it can with a unique id, and audits the answers."""

    def __init__(self, sidecar: RawSidecar) -> None:
        self.sidecar = sidecar
        self._ids = itertools.count()
        self.expected: set[str] = set()  # ids that must get exactly one response
        self.lines_by_id: dict[str, bytes] = {}  # to show what an unanswered request was
        self.valid_streams: set[str] = set()
        # Every id a sent line carried: an invalid request is answered with its own id
        # when it has a readable one, even one the fuzzer did not make.
        self.sent_ids: set[Any] = set()
        self.sent = 0

    def new_id(self) -> str:
        return f"fz-{next(self._ids)}"

    def send_line(self, line: bytes) -> None:
        self.sent_ids |= _readable_ids(line)
        self.sidecar.send_bytes(line.replace(b"\n", b" ") + b"\n")
        self.sent += 1

    def send_message(self, message: Any) -> None:
        for item in message if isinstance(message, list) else [message]:
            if isinstance(item, dict) and isinstance(item.get("id"), str) and item["id"].startswith("fz-"):
                self.expected.add(item["id"])
        # The standard library encodes integers beyond 64 bits, which orjson refuses to.
        line = json.dumps(message, ensure_ascii=False).encode()
        for request_id in self.expected - self.lines_by_id.keys():
            self.lines_by_id[request_id] = line
        self.send_line(line)

    def real_stream(self, max_tokens: int, cancel: bool) -> None:
        request_id = self.new_id()
        self.valid_streams.add(request_id)
        self.send_message(
            {
                "jsonrpc": "2.0",
                "id": request_id,
                "method": "promptStream",
                "params": {"prompt": "hi", "maxTokens": max_tokens},
            }
        )
        if cancel:
            self.send_message(
                {
                    "jsonrpc": "2.0",
                    "id": self.new_id(),
                    "method": "cancel",
                    "params": {"requestId": request_id},
                }
            )

    def audit(self, timeout: float = 30.0) -> None:
        """Wait for every expected response and check all invariants on what arrived."""
        assert self.sidecar.process.poll() is None, "the sidecar died"
        deadline = time.monotonic() + timeout
        responses: Counter[Any] = Counter()
        finals: Counter[Any] = Counter()
        while True:
            for message in self._drain():
                for item in message if isinstance(message, list) else [message]:
                    if item.get("method") == "streamChunk":
                        finals[item["params"]["requestId"]] += item["params"]["isFinal"]
                    else:
                        responses[item.get("id")] += 1
            assert not self.sidecar.bad_lines, self.sidecar.bad_lines[:3]
            missing = {request_id for request_id in self.expected if responses[request_id] == 0}
            if not missing:
                break
            first = sorted(missing)[0]
            assert time.monotonic() < deadline, (
                f"no response for {len(missing)}, first {self.lines_by_id[first]!r}"
            )
            time.sleep(0.01)
        assert not self.sidecar.bad_lines, self.sidecar.bad_lines[:3]
        unexpected = {key for key in responses if key is not None and key not in self.sent_ids}
        assert not unexpected, f"responses to ids never sent as requests: {unexpected}"
        assert all(responses[request_id] == 1 for request_id in self.expected), "a request answered twice"
        assert all(count == 1 for count in finals.values()), "a stream without exactly one final chunk"
        assert self.valid_streams <= set(finals), "a valid stream without a final chunk"
        self.expected.clear()
        self.valid_streams.clear()
        self.lines_by_id.clear()

    def _drain(self) -> Iterator[Any]:
        while not self.sidecar.messages.empty():
            yield self.sidecar.messages.get_nowait()


def _readable_ids(line: bytes) -> set[Any]:
    """The ids of the objects a line holds, alone or in a batch (what a response may carry)."""
    try:
        value = json.loads(line)
    except ValueError:  # not JSON, or not UTF-8
        return set()
    return {
        item["id"]
        for item in (value if isinstance(value, list) else [value])
        if isinstance(item, dict)
        and isinstance(item.get("id"), str | int | float)
        and not isinstance(item.get("id"), bool)
    }


@st.composite
def rpc_shapes(draw: st.DrawFn, fuzzer: Fuzzer) -> Any:
    message: dict[str, Any] = {}
    if draw(st.integers(0, 9)) > 0:
        message["jsonrpc"] = draw(st.sampled_from(["2.0", "2.0", "2.0", "1.0", 2]))
    if draw(st.booleans()):
        message["method"] = draw(st.sampled_from(METHODS) | st.text(max_size=12) | json_values)
    id_kind = draw(st.integers(0, 5))
    if id_kind <= 2:
        message["id"] = fuzzer.new_id()
    elif id_kind == 3:
        message["id"] = draw(
            st.booleans()
            | st.lists(st.integers(), max_size=2)
            | st.dictionaries(st.text(max_size=3), st.integers(), max_size=1)
        )
    if draw(st.integers(0, 4)) > 0:
        keys = st.sampled_from(PARAM_NAMES) | st.text(max_size=8)
        message["params"] = draw(st.dictionaries(keys, json_values, max_size=4) | json_values)
        if isinstance(message["params"], dict) and draw(st.integers(0, 3)) == 0:
            message["params"]["sessionId"] = LIVE_SESSION
    return message


@st.composite
def fuzz_lines(draw: st.DrawFn, fuzzer: Fuzzer) -> Any:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.binary(max_size=60))
    if kind == 1:
        return json.dumps(draw(json_values)).encode()
    if kind == 2:
        return draw(st.lists(rpc_shapes(fuzzer), max_size=5))
    return draw(rpc_shapes(fuzzer))


@pytest.fixture(scope="module")
def fuzz_target(tiny_model: Path) -> Iterator[Fuzzer]:
    sidecar = RawSidecar("--log-level", "warning")
    sidecar.initialize()
    # A small context bounds the fuzzed prompts that are valid and ask for no maxTokens.
    sidecar.request(
        "loadModel", {"modelPath": str(tiny_model), "modelId": "tiny", "contextSize": 256, "threads": 1}
    )
    assert sidecar.request("createSession", {"contextSize": 128})["sessionId"] == LIVE_SESSION
    fuzzer = Fuzzer(sidecar)
    yield fuzzer
    fuzzer.audit()
    sidecar.stop()


# No shrinking: the examples share one live process, so a failure is not replayable in isolation.
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    print_blob=False,
)
@given(data=st.data())
def test_fuzzed_traffic_keeps_every_invariant(fuzz_target: Fuzzer, data: st.DataObject) -> None:
    fuzzer = fuzz_target
    for _ in range(data.draw(st.integers(20, 70), label="batch size")):
        line = data.draw(fuzz_lines(fuzzer))
        if isinstance(line, bytes):
            fuzzer.send_line(line)
        else:
            fuzzer.send_message(line)
        if data.draw(st.integers(0, 30)) == 0:
            fuzzer.real_stream(data.draw(st.integers(1, 40)), cancel=data.draw(st.booleans()))
    fuzzer.audit()


def test_the_fuzzer_sent_enough(fuzz_target: Fuzzer) -> None:
    # Runs after the property test in this module (pytest keeps file order).
    assert fuzz_target.sent >= min(EXAMPLES * 40, 10_000)
