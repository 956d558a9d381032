"""Property-based fuzzing of a running sidecar over its real stdio.

Random bytes, random JSON and random JSON-RPC shapes (every method but
``shutdown``, made-up method names, real and made-up params) are interleaved
with real ``promptStream`` and ``cancel`` traffic on the tiny model. Checked on
every message as it arrives and after every example:

- the process is alive and every stdout line is a schema-valid message (the
  harness checks each one);
- every request with an id gets exactly one response, over the whole run;
- notifications get none: responses with ``id: null`` are counted against the
  lines that warrant one (unparseable lines, invalid requests whose id cannot be
  read, requests whose id is null), and the counts must match;
- every ``promptStream`` that passed the schema check gets exactly one final
  chunk, before its response (PROTOCOL.md §4), and no chunk follows a response;
- no request ends in -32603 (an exception the sidecar did not expect);
- the sidecar never starts a program, touches the network or writes a file
  (an audit hook watches it; ``downloadModel`` is refused without
  ``--models-dir``, which this sidecar does not get);
- a request with a pathologically long text (one long word, brackets nested deep
  inside a string, long runs of multibyte characters, of whitespace or of special
  tokens: up to 1 MiB) in any field that is tokenized, rendered or parsed is answered
  within its own time budget, and a ``ping`` sent behind it as well (the event
  loop is never held up).

At the default 250 examples the run sends over 10,000 lines, which must take
less than a minute. ``SIDECAR_FUZZ_EXAMPLES`` raises the number of examples for
a soak run, and the per-test timeout grows with it (half a second an example).
Runs are deterministic by default, so that a red CI run replays the same
messages; ``SIDECAR_FUZZ_SEED`` (an integer, or ``random``) explores others,
and the seed is printed for the failure report.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from .audit_hook import audited_env, violations
from .harness import RawSidecar

DEFAULT_EXAMPLES = 250
EXAMPLES = int(os.environ.get("SIDECAR_FUZZ_EXAMPLES", str(DEFAULT_EXAMPLES)))


def _seed_setting() -> int | None:
    setting = os.environ.get("SIDECAR_FUZZ_SEED", "")
    if setting == "random":
        return random.randrange(2**32)
    return int(setting) if setting else None


SEED = _seed_setting()
BUDGET_MESSAGES, BUDGET_SECONDS = 10_000, 60.0  # the ordinary lines; pathological ones are timed apart
# Each request with a pathological text, and a ping behind it: the target is 1 s; measured at
# most 0.26 s on the tiny model (tests/test_long_texts.py). A 2-core machine gets a margin.
PATHOLOGICAL_BUDGET_SECONDS = 3.0
# shutdown would end the run; unloadModel is fuzzed with made-up model ids only (see _confined).
METHODS = [
    "initialize",
    "loadModel",
    "unloadModel",
    "listModels",
    "inspectModel",
    "prompt",
    "promptStream",
    "tokenize",
    "detokenize",
    "countTokens",
    "embed",
    "downloadModel",
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
# Values of the right type and near the limits, so that fuzzed requests often pass the schema
# check and reach the service (sessions, grammars, streams that fail after starting).
PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "modelPath": st.sampled_from(["/nonexistent/model.gguf", "", ".", "/etc/passwd", "/dev/zero"]),
    "modelId": st.sampled_from(["tiny", "never-loaded", ""]),
    "prompt": st.text(max_size=30),
    "messages": st.lists(
        st.fixed_dictionaries(
            {
                "role": st.sampled_from(["system", "user", "assistant", "tool"]),
                "content": st.text(max_size=20),
            }
        ),
        max_size=3,
    ),
    "maxTokens": st.integers(-1, 24),
    "temperature": st.floats(0, 2),
    "topK": st.integers(-1, 50),
    "stop": st.lists(st.text(max_size=3), max_size=3),
    "grammar": st.sampled_from(['root ::= "ok"', "root ::= [a-z]+", "root ::= (", 'root ::= "a" root']),
    "jsonSchema": st.sampled_from(
        [{"type": "object"}, {"type": "integer"}, {"$ref": "#/$defs/missing"}, {"enum": []}, {"type": 5}]
    ),
    "requestId": st.text(max_size=6),
    "seed": st.integers(-1, 2**32),
    "sessionId": st.sampled_from([LIVE_SESSION, "session-404"]),
    "text": st.text(max_size=30),
    "tokens": st.lists(st.integers(-1, 400), max_size=5),
    "input": st.text(max_size=10) | st.lists(st.text(max_size=10), max_size=3),
    "url": st.sampled_from(["http://127.0.0.1:9/model.gguf", "ftp://127.0.0.1:9/m.gguf", "not a url"]),
    "destination": st.sampled_from(["model.gguf", "../escape.gguf", "/tmp/x.gguf"]),
    "systemPrompt": st.text(max_size=20),
    "contextSize": st.integers(-1, 512),
}
PARAM_NAMES = list(PLAUSIBLE)
# Units repeated into pathological texts: a long word, nesting inside a string, multibyte runs
# (SentencePiece's byte fallback is quadratic in them), whitespace runs, special tokens.
PATHOLOGICAL_UNITS = [
    "a",
    "{[(",
    '"\\',
    "日",
    "😀",
    "é",
    " ",
    "\n",
    "\u00a0",
    "<|im_start|>",
    "a b ",
    "<s> x",
]
pathological_texts = st.builds(
    lambda unit, count: unit * max(count // len(unit.encode()), 1),
    st.sampled_from(PATHOLOGICAL_UNITS),
    st.sampled_from([5_000, 16_385, 100_000, 2**18, 2**20]),  # bytes of UTF-8, about
)
# A promptStream refused with one of these never started: it has no final chunk (PROTOCOL.md §4).
# -32602 is either the schema's (no chunk) or llama.cpp refusing a grammar (a chunk).
NO_FINAL_CHUNK = {-32600, -32002, -32007, -32009}
INTERNAL_ERROR = -32603


class Fuzzer:
    """Sends fuzz messages, tags every request it can with a unique id, and audits the answers."""

    def __init__(self, sidecar: RawSidecar) -> None:
        self.sidecar = sidecar
        self._ids = itertools.count()
        self.awaited: set[str] = set()  # fuzzer ids sent since the last audit
        self.lines_by_id: dict[str, bytes] = {}  # to show what an unanswered request was
        self.streams: set[str] = set()  # fuzzer ids of promptStream requests
        self.valid_streams: set[str] = set()  # real_stream's, which must end normally
        # Every id a sent line carried: an invalid request is answered with its own id
        # when it has a readable one, even one the fuzzer did not make.
        self.sent_ids: set[Any] = set()
        self.responses: Counter[Any] = Counter()  # over the whole run
        self.outcomes: dict[Any, int | None] = {}  # id -> error code, None for a result
        self.finals: Counter[Any] = Counter()
        self.null_ids_warranted = 0
        self.null_ids_received = 0
        self.sent = 0
        self.started = 0.0
        self.budget_seconds: float | None = None  # time to send and settle the first 10,000 lines
        self.pathological_seconds = 0.0  # spent on pathological requests, not counted in the budget
        self.slowest_pathological = (0.0, "")
        self.pathological_sent = 0

    def new_id(self) -> str:
        return f"fz-{next(self._ids)}"

    def send_line(self, line: bytes) -> None:
        self.started = self.started or time.monotonic()
        frame = line.replace(b"\n", b" ")
        self.sent_ids |= _readable_ids(frame)
        self.null_ids_warranted += _null_id_answers(frame)
        self.sidecar.send_bytes(frame + b"\n")
        self.sent += 1

    def send_message(self, message: Any) -> None:
        # The standard library encodes integers beyond 64 bits, which orjson refuses to.
        line = json.dumps(message, ensure_ascii=False).encode()
        for item in message if isinstance(message, list) else [message]:
            if isinstance(item, dict) and isinstance(item.get("id"), str) and item["id"].startswith("fz-"):
                self.awaited.add(item["id"])
                self.lines_by_id[item["id"]] = line
                if item.get("method") == "promptStream":
                    self.streams.add(item["id"])
                if item.get("method") in METHODS:  # the harness then checks a result against its schema
                    self.sidecar.method_of[item["id"]] = item["method"]
        self.send_line(line)

    def real_stream(self, max_tokens: int, cancel: bool) -> None:
        request_id = self.new_id()
        self.valid_streams.add(request_id)
        params = {"prompt": "hi", "maxTokens": max_tokens}
        self.send_message({"jsonrpc": "2.0", "id": request_id, "method": "promptStream", "params": params})
        if cancel:
            cancel_params = {"requestId": request_id}
            self.send_message(
                {"jsonrpc": "2.0", "id": self.new_id(), "method": "cancel", "params": cancel_params}
            )

    def pathological(self, method: str, params: dict[str, Any]) -> None:
        """Send one request with a pathological text and a ping behind it; both answer in budget."""
        started = time.monotonic()
        request_id, ping_id = self.new_id(), self.new_id()
        self.send_message({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        self.send_message({"jsonrpc": "2.0", "id": ping_id, "method": "ping"})
        while request_id not in self.outcomes or ping_id not in self.outcomes:
            took = time.monotonic() - started
            shape = {
                key: f"{len(value)} characters" if isinstance(value, str) else value
                for key, value in params.items()
            }
            assert took < PATHOLOGICAL_BUDGET_SECONDS, f"{method} {shape} unanswered after {took:.1f} s"
            self._take_arrivals()
            time.sleep(0.002)
        took = time.monotonic() - started
        self.pathological_seconds += took
        self.pathological_sent += 1
        self.slowest_pathological = max(self.slowest_pathological, (took, method))

    def audit(self, timeout: float = 30.0) -> None:
        """Wait for every awaited response, then check what arrived."""
        assert self.sidecar.process.poll() is None, "the sidecar died"
        # A batch sent last is answered after every earlier line's own errors, null ids included.
        closing = self.new_id()
        self.send_message([{"jsonrpc": "2.0", "id": closing, "method": "ping"}])
        deadline = time.monotonic() + timeout
        while missing := {request_id for request_id in self.awaited if request_id not in self.outcomes}:
            assert time.monotonic() < deadline, (
                f"no response for {len(missing)}, first {self.lines_by_id[min(missing)]!r}"
            )
            self._take_arrivals()
            time.sleep(0.005)
        assert self.null_ids_received == self.null_ids_warranted, (
            f"{self.null_ids_received} responses with id null, {self.null_ids_warranted} warranted"
        )
        self._check_streams()
        unexpected = {key for key in self.responses if key is not None and key not in self.sent_ids}
        assert not unexpected, f"responses to ids never sent as requests: {unexpected}"
        if self.budget_seconds is None and self.sent >= BUDGET_MESSAGES:
            self.budget_seconds = time.monotonic() - self.started - self.pathological_seconds
        self.awaited.clear()
        self.valid_streams.clear()
        self.lines_by_id.clear()

    def _check_streams(self) -> None:
        for request_id in self.awaited & self.streams:
            code, finals = self.outcomes[request_id], self.finals[request_id]
            line = self.lines_by_id[request_id]
            if code in NO_FINAL_CHUNK:
                assert finals == 0, f"a final chunk for a refused stream: {line!r}"
            elif code != -32602:
                assert finals == 1, f"{finals} final chunks for a stream answered {code}: {line!r}"
        failed = {self.outcomes[request_id] for request_id in self.valid_streams} - {None}
        assert not failed, f"real streams failed with {failed}"

    def _take_arrivals(self) -> None:
        assert not self.sidecar.bad_lines, self.sidecar.bad_lines[:3]
        while not self.sidecar.messages.empty():
            message = self.sidecar.messages.get_nowait()
            for item in message if isinstance(message, list) else [message]:
                if item.get("method") == "streamChunk":
                    self._take_chunk(item["params"])
                elif "id" in item:
                    self._take_response(item)

    def _take_chunk(self, chunk: dict[str, Any]) -> None:
        request_id = chunk["requestId"]
        if not (isinstance(request_id, str) and request_id.startswith("fz-")):
            return
        assert request_id in self.streams, f"a chunk for {request_id}, which is no promptStream"
        assert request_id not in self.outcomes, f"a chunk for {request_id} after its response"
        self.finals[request_id] += chunk["isFinal"]
        assert self.finals[request_id] <= 1, f"a second final chunk for {request_id}"

    def _take_response(self, response: dict[str, Any]) -> None:
        request_id = response["id"]
        code = response["error"]["code"] if "error" in response else None
        assert code != INTERNAL_ERROR, f"internal error for {self.lines_by_id.get(request_id)!r}"
        if request_id is None:
            self.null_ids_received += 1
            return
        self.responses[request_id] += 1
        self.outcomes[request_id] = code
        if isinstance(request_id, str) and request_id.startswith("fz-"):
            assert self.responses[request_id] == 1, f"{request_id} answered twice"


_NO_OBJECT = object()  # stands for an unparseable line or an empty batch


def _frames(line: bytes) -> list[Any]:
    """The JSON-RPC objects the sidecar reads from one line (a batch gives several); [] if none."""
    frame = line.removesuffix(b"\r")  # the framer strips one trailing CR; blank lines are skipped
    if not frame:
        return []
    try:
        value = orjson.loads(frame)  # the sidecar's own parser: the same values, the same failures
    except orjson.JSONDecodeError:
        return [_NO_OBJECT]
    if isinstance(value, list):
        return value or [_NO_OBJECT]  # an empty batch is one invalid request
    return [value]


def _null_id_answers(line: bytes) -> int:
    """How many responses with ``id: null`` the sidecar owes for ``line`` (JSON-RPC 2.0 §5)."""
    return sum(_answered_with_null(item) for item in _frames(line))


def _answered_with_null(item: object) -> bool:
    if not isinstance(item, dict):  # unparseable, an empty batch, or no object at all
        return True
    valid_id = _is_id(item.get("id"))
    well_formed = (
        item.get("jsonrpc") == "2.0"
        and isinstance(item.get("method"), str)
        and ("id" not in item or valid_id)
        and ("params" not in item or isinstance(item["params"], dict | list))
    )
    if not well_formed:  # an invalid request: answered with its id if readable, else null
        return not valid_id or item.get("id") is None
    return "id" in item and item["id"] is None  # a notification (no id) is never answered


def _is_id(value: object) -> bool:
    return value is None or (isinstance(value, str | int | float) and not isinstance(value, bool))


def _readable_ids(line: bytes) -> set[Any]:
    """The ids of the objects a line holds, alone or in a batch (what a response may carry)."""
    return {
        item["id"]
        for item in _frames(line)
        if isinstance(item, dict) and item.get("id") is not None and _is_id(item["id"])
    }


def _confined(message: dict[str, Any]) -> dict[str, Any]:
    """Keep a fuzzed unloadModel off the model the real streams use: it names a model never loaded.

    Its params are always an object: without one (or with ``[]``) it would unload the default model.
    """
    if message.get("method") == "unloadModel":
        params = message.get("params")
        message["params"] = {**(params if isinstance(params, dict) else {}), "modelId": "never-loaded"}
    return message


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
    params_kind = draw(st.integers(0, 5))
    if params_kind in (1, 2):
        keys = st.sampled_from(PARAM_NAMES) | st.text(max_size=8)
        message["params"] = draw(st.dictionaries(keys, json_values, max_size=4) | json_values)
    elif params_kind >= 3:
        names = draw(st.lists(st.sampled_from(PARAM_NAMES), max_size=3, unique=True))
        message["params"] = {name: draw(PLAUSIBLE[name]) for name in names}
    return _confined(message)


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


@st.composite
def pathological_requests(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A request whose tokenized, rendered or parsed text is pathologically long."""
    text = draw(pathological_texts)
    message = [{"role": "user", "content": text}]
    return draw(
        st.sampled_from(
            [
                ("tokenize", {"text": text}),
                ("tokenize", {"text": text, "special": False}),
                ("countTokens", {"prompt": text}),
                ("countTokens", {"messages": message}),
                ("prompt", {"prompt": text, "maxTokens": 2}),
                ("promptStream", {"messages": message, "maxTokens": 2}),
                ("promptStream", {"sessionId": LIVE_SESSION, "text": text, "maxTokens": 2}),
                ("embed", {"input": [text, "short"]}),
                ("prompt", {"prompt": "hi", "maxTokens": 2, "stop": [text[:1024]] * 64}),
                (
                    "prompt",
                    {"prompt": "hi", "maxTokens": 2, "grammar": f"root ::= {orjson.dumps(text).decode()}"},
                ),
                ("createSession", {"systemPrompt": text}),
            ]
        )
    )


@pytest.fixture(scope="module")
def audit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("audit")


@pytest.fixture(scope="module")
def fuzz_target(tiny_model: Path, audit_dir: Path) -> Iterator[Fuzzer]:
    print(f"fuzz seed: {'derandomized (the default)' if SEED is None else SEED}")  # shown on failure
    sidecar = RawSidecar("--log-level", "warning", env=audited_env(audit_dir))
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


_F = TypeVar("_F", bound=Callable[..., Any])


def _seeded(test: _F) -> _F:
    return test if SEED is None else seed(SEED)(test)


# No shrinking: the examples share one live process, so a failure is not replayable in isolation.
@pytest.mark.timeout(max(120, EXAMPLES // 2))
@_seeded
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=SEED is None,
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
        if data.draw(st.integers(0, 60)) == 0:
            fuzzer.pathological(*data.draw(pathological_requests()))
    fuzzer.audit()


def test_ten_thousand_messages_within_a_minute(fuzz_target: Fuzzer) -> None:
    # Runs after the property test in this module (pytest keeps file order).
    print(  # shown on failure, and with -s
        f"{fuzz_target.pathological_sent} pathological requests, the slowest answered in "
        f"{fuzz_target.slowest_pathological[0]:.2f} s ({fuzz_target.slowest_pathological[1]})"
    )
    if EXAMPLES < DEFAULT_EXAMPLES:
        pytest.skip(f"SIDECAR_FUZZ_EXAMPLES={EXAMPLES} sends fewer messages than the CI budget")
    assert fuzz_target.budget_seconds is not None, f"only {fuzz_target.sent} lines sent"
    assert fuzz_target.budget_seconds < BUDGET_SECONDS, (
        f"{BUDGET_MESSAGES} lines took {fuzz_target.budget_seconds:.1f} s"
    )


def test_the_fuzzed_sidecar_ran_no_program_reached_no_network_wrote_no_file(
    fuzz_target: Fuzzer, audit_dir: Path
) -> None:
    assert fuzz_target.sent > 0
    assert violations(audit_dir) == []
