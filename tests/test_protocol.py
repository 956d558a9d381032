"""The spec, the schemas and the code describe one protocol: these fail when they drift apart."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator

from sidecar.errors import ERROR_CLASSES, InvalidParams
from sidecar.methods import build_method_table
from sidecar.schema import SCHEMA_DIR, method_names, notification_names, params_validator, validator_for
from sidecar.service import ModelService
from sidecar.settings import Settings

from .harness import ROOT, validate_server_message

SPEC = (ROOT / "protocol" / "PROTOCOL.md").read_text()


def _section(number: int) -> str:
    start = SPEC.index(f"\n## {number}. ")
    end = SPEC.find("\n## ", start + 1)
    return SPEC[start:end]


def _table_methods() -> set[str]:
    def unused() -> None:
        raise AssertionError("not called in this test")

    table = build_method_table(
        ModelService(unused),  # type: ignore[arg-type]
        cancel_request=lambda _id: False,
        request_shutdown=unused,
        settings=Settings(),
    )
    return set(table)


def test_method_table_equals_the_schemas_and_the_spec() -> None:
    headings = re.findall(r"^### (.+)$", _section(3), flags=re.MULTILINE)
    documented = {
        name for heading in headings if "host" not in heading for name in re.split(r", | and ", heading)
    }
    assert _table_methods() == set(method_names()) == documented


def test_notifications_equal_the_schemas_and_the_spec() -> None:
    assert set(notification_names()) == set(re.findall(r"^### (\w+)$", _section(4), flags=re.MULTILINE))


def test_error_codes_equal_the_schema_and_the_spec() -> None:
    schema = orjson.loads((SCHEMA_DIR / "error.json").read_bytes())
    in_schema = {(item["const"], item["title"]) for item in schema["$defs"]["ErrorCode"]["oneOf"]}
    in_spec = {
        (int(code), name)
        for code, name in re.findall(r"^\| (-\d+) \| (\w+) \|", _section(7), flags=re.MULTILINE)
    }
    in_code = {(error.code, error.name) for error in ERROR_CLASSES}
    assert in_code == in_schema == in_spec


@pytest.mark.parametrize(
    "path", sorted(SCHEMA_DIR.rglob("*.json")), ids=lambda p: str(p.relative_to(SCHEMA_DIR))
)
def test_every_schema_is_valid_draft_2020_12(path: Path) -> None:
    Draft202012Validator.check_schema(orjson.loads(path.read_bytes()))


def test_every_method_schema_has_params_and_result() -> None:
    for name in method_names():
        definitions = orjson.loads((SCHEMA_DIR / "methods" / f"{name}.json").read_bytes())["$defs"]
        assert set(definitions) == {"params", "result"}, name


def test_readme_lists_every_method() -> None:
    readme = (ROOT / "README.md").read_text()
    assert {name for name in method_names() if f"| `{name}` |" not in readme} == set()


def _example_lines() -> list[tuple[int, str, str]]:
    """Every ``-> message`` / ``<- message`` line of the spec: (line number, arrow, JSON text)."""
    return [
        (number, match[1], match[2])
        for number, line in enumerate(SPEC.splitlines(), start=1)
        if (match := re.fullmatch(r"(->|<-) (.+)", line))
    ]


def test_every_example_message_in_the_spec_validates_against_the_schemas() -> None:
    method_of: dict[Any, str] = {}  # request id -> method, for the result schema of its response
    checked = 0
    for number, arrow, text in _example_lines():
        try:
            message = orjson.loads(text)
        except orjson.JSONDecodeError:
            # Shortened with "…" (a long vector, a metadata map): skipped; nothing else may fail.
            assert "…" in text, f"line {number} is not JSON: {text}"
            continue
        if arrow == "->":
            validator_for("message.json#/$defs/Request").validate(message)
            validator_for(f"methods/{message['method']}.json#/$defs/params").validate(
                message.get("params", {})
            )
            method_of[message["id"]] = message["method"]
        else:
            assert "method" in message or message["id"] in method_of, f"line {number} answers no request"
            validate_server_message(message, method_of)
        checked += 1
    assert checked >= 40  # the spec's examples, less the two shortened with "…"


def _error_table() -> dict[int, str]:
    """§7's table: each code's `data` column."""
    rows = re.findall(r"^\| (-\d+) \| \w+ \| .+ \| (.+) \|$", _section(7), flags=re.MULTILINE)
    return {int(code): data for code, data in rows}


def _schema_data_codes() -> tuple[set[int], set[int]]:
    """The codes error.json gives a required ``data``, and those it forbids ``data``."""
    rules = orjson.loads((SCHEMA_DIR / "error.json").read_bytes())["allOf"]
    with_data = {
        rule["if"]["properties"]["code"]["const"]
        for rule in rules
        if "data" in rule["then"].get("required", [])
    }
    without = {
        code for rule in rules if "not" in rule["then"] for code in rule["if"]["properties"]["code"]["enum"]
    }
    return with_data, without


def test_the_spec_error_table_and_the_schema_agree_on_which_codes_carry_data() -> None:
    table = _error_table()
    with_data, without = _schema_data_codes()
    assert len(table) == len(ERROR_CLASSES)
    assert {code for code, data in table.items() if not data.startswith("—")} == with_data
    assert {code for code, data in table.items() if data.startswith("—")} == without


_USAGE = {"promptTokens": 3, "completionTokens": 2}
_TIMINGS = {"ttftMs": 1.0, "promptMs": 1.0, "decodeMs": 1.0, "tokensPerSecond": 1.0}
_FINAL = {"requestId": 1, "index": 2, "timestamp": 1, "content": "", "isFinal": True}


@pytest.mark.parametrize(
    ("chunk", "valid"),
    [
        ({**_FINAL, "finishReason": "stop", "usage": _USAGE, "timings": _TIMINGS}, True),
        ({**_FINAL, "finishReason": "error"}, True),
        ({**_FINAL, "finishReason": "error", "usage": _USAGE, "timings": _TIMINGS}, False),
        ({**_FINAL, "finishReason": "error", "timings": _TIMINGS}, False),
        ({**_FINAL, "finishReason": "stop", "usage": _USAGE}, False),
        ({**_FINAL, "content": "x", "finishReason": "length", "usage": _USAGE, "timings": _TIMINGS}, False),
        ({**_FINAL, "content": "x", "finishReason": "error"}, False),
        ({**_FINAL, "isFinal": False, "content": "x"}, True),
        ({**_FINAL, "isFinal": False, "finishReason": "stop"}, False),
    ],
    ids=[
        "final",
        "final-error",
        "error-with-usage",
        "error-with-timings",
        "final-without-timings",
        "final-with-content",
        "error-with-content",
        "piece",
        "piece-with-reason",
    ],
)
def test_the_final_chunk_is_empty_and_an_error_chunk_has_no_usage(chunk: dict[str, Any], valid: bool) -> None:
    # The sidecar always ends a stream this way (methods._ChunkStream.end); the schema holds hosts to it.
    assert validator_for("notifications/streamChunk.json#/$defs/params").is_valid(chunk) is valid


@pytest.mark.parametrize(
    ("method", "params", "bad_item", "field"),
    [
        ("detokenize", {"tokens": [5] * 2**20}, -1, "tokens/{index}"),
        ("detokenize", {"tokens": [5] * 2**20}, True, "tokens/{index}"),
        ("detokenize", {"tokens": [5] * 2**20}, 2**32, "tokens/{index}"),
        (
            "setSessionHistory",
            {"sessionId": "s", "messages": [{"role": "user", "content": "x"}] * 100_000},
            {"role": "bot", "content": "x"},
            "messages/{index}/role",
        ),
        (
            "setSessionHistory",
            {"sessionId": "s", "messages": [{"role": "user", "content": "x"}] * 100_000},
            {"role": "user", "content": "x", "extra": 1},
            "messages/{index}/extra",
        ),
        ("embed", {"input": ["x"] * 2048}, 5, "input/{index}"),
    ],
)
def test_long_arrays_are_checked_quickly_and_a_bad_item_is_still_named(
    method: str, params: dict[str, Any], bad_item: object, field: str
) -> None:
    validate = params_validator(method)
    (name,) = (key for key, value in params.items() if isinstance(value, list))
    started = time.perf_counter()
    assert validate(params) is params
    # The standard jsonschema walk took 5.2 s for 2**20 ids, 1.4 s for 100,000 messages.
    assert time.perf_counter() - started < 1.0
    index = len(params[name]) - 2
    items = [*params[name][:index], bad_item, params[name][-1]]
    with pytest.raises(InvalidParams) as refused:
        validate({**params, name: items})
    assert refused.value.data == {"field": field.format(index=index)}
