"""Constrained output: a GBNF grammar or a JSON Schema the reply must follow."""

from __future__ import annotations

from typing import Any

import jsonschema
import numpy
import pytest

from sidecar.client import RemoteError, SidecarClient

from .harness import RawSidecar

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
}


def test_a_grammar_constrains_even_a_random_model(loaded: RawSidecar) -> None:
    for seed in range(8):
        result = loaded.request(
            "prompt",
            {"prompt": "hi", "grammar": 'root ::= ("yes" | "no") "."', "temperature": 1.5, "seed": seed},
        )
        assert result["text"] in ("yes.", "no.") and result["finishReason"] == "stop"


def test_streamed_grammar_output_joins_to_the_result(loaded: RawSidecar) -> None:
    chunks, response = loaded.stream(
        {"prompt": "hi", "grammar": 'root ::= [a-c]{3,6} "!"', "temperature": 1.0}
    )
    assert "".join(chunk["content"] for chunk in chunks) == response["result"]["text"]
    assert response["result"]["text"].endswith("!")


def _nested(depth: int) -> str:
    return "root ::= " + "(" * depth + '"a"' + ")" * depth


def _chained(length: int) -> str:
    """``root`` and ``length`` + 1 rules, each referring to the next (short names: under 1 MiB at 70,000)."""
    name = [f"r{numpy.base_repr(i, 36)}" for i in range(length + 1)]
    links = "\n".join(f"{name[i]}::={name[i + 1]}" for i in range(length))
    return f'root::={name[0]}\n{links}\n{name[length]}::="a"'


def _deep_schema(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


@pytest.mark.parametrize(
    ("params", "field", "reason"),
    [
        ({"grammar": "root ::= yes |"}, "grammar", "Undefined rule identifier 'yes'"),
        ({"grammar": 'notroot ::= "x"'}, "grammar", "root"),
        # llama.cpp's parser recurses per group: this deep it overflowed the stack and killed the process.
        ({"grammar": _nested(30_000)}, "grammar", "nests groups 30000 deep"),
        ({"grammar": _nested(129)}, "grammar", "nests groups 129 deep"),
        # llama.cpp recurses along rule references too: 70,000 crashed it.
        ({"grammar": _chained(70_000)}, "grammar", "chains 70002 rules"),
        ({"grammar": _chained(1_000)}, "grammar", "chains 1002 rules"),
        ({"jsonSchema": _deep_schema(400)}, "jsonSchema", "jsonSchema"),  # deeper than Python recursion
        ({"jsonSchema": {"type": "no-such-type"}}, "jsonSchema", "no-such-type"),
        ({"jsonSchema": {"$ref": "https://example.invalid/s.json"}}, "jsonSchema", "refers outside itself"),
        ({"grammar": 'root ::= "a"', "jsonSchema": {"type": "object"}}, "", "grammar"),
    ],
    ids=[
        "undefined-rule",
        "no-root",
        "nested-30000",
        "nested-129",
        "chained-70000",
        "chained-1000",
        "deep-schema",
        "unknown-type",
        "remote-ref",
        "both",
    ],
)
def test_unusable_grammars_and_schemas_are_invalid_params_with_the_reason(
    loaded: RawSidecar, params: dict[str, Any], field: str, reason: str
) -> None:
    error = loaded.error("prompt", {"prompt": "hi", "maxTokens": 4, **params})
    assert error["code"] == -32602 and error["data"] == {"field": field}, error
    assert reason in error["message"], error
    assert loaded.request("ping") == {}


def test_groups_nested_to_the_limit_and_brackets_in_literals_are_fine(loaded: RawSidecar) -> None:
    assert loaded.request("prompt", {"prompt": "hi", "grammar": _nested(128)})["text"] == "a"
    assert loaded.request("prompt", {"prompt": "hi", "grammar": _chained(998)})["text"] == "a"  # 1000 rules
    literal = 'root ::= "((((" [(]{2} # (((( a comment\n'
    assert loaded.request("prompt", {"prompt": "hi", "grammar": literal})["text"] == "(((((("


def test_a_grammar_error_is_logged_without_the_grammar(loaded: RawSidecar) -> None:
    marker = "GRAMMARMARKER"
    loaded.error("prompt", {"prompt": "hi", "grammar": f'root ::= {marker} | "{marker}"'})
    assert loaded.request("ping") == {}
    loaded.stop()
    log = b"".join(loaded.stderr_lines).decode("utf-8", "replace")
    assert f"Undefined rule identifier '{marker}'" in log  # llama.cpp's own line, passed on
    assert f'"{marker}"' not in log  # its echo of the whole grammar is not


def test_a_reply_cut_by_a_stop_string_has_no_json(loaded: RawSidecar) -> None:
    # One integer the schema allows: the reply is known, whatever the random model would write.
    params = {"prompt": "hi", "jsonSchema": {"type": "integer", "const": 25747}, "maxTokens": 12}
    whole = loaded.request("prompt", params)
    assert (whole["text"], whole["finishReason"], whole["json"]) == ("25747", "stop", 25747)
    stopped = loaded.request("prompt", {**params, "stop": ["5"]})
    # "5" cut it: what is left parses ("2"), yet a reply cut by a stop string has no json.
    assert stopped["text"] == "2" and stopped["finishReason"] == "stop" and "json" not in stopped, stopped


def test_json_schema_reply_parses_and_validates_on_a_real_model(smol: SidecarClient) -> None:
    messages = [{"role": "user", "content": "Invent a person. Reply in JSON with their name and age."}]
    result = smol.prompt(messages=messages, jsonSchema=PERSON, maxTokens=120, temperature=0)
    assert result["finishReason"] == "stop"
    jsonschema.validate(result["json"], PERSON)
    streamed = smol.prompt_stream(
        messages=messages, jsonSchema=PERSON, maxTokens=120, temperature=0.9, seed=5
    )
    text = "".join(chunk["content"] for chunk in streamed)
    final = streamed.result()
    assert final["text"] == text
    jsonschema.validate(final["json"], PERSON)


def test_a_truncated_json_reply_has_no_json_field(smol: SidecarClient) -> None:
    result = smol.prompt("Data:", jsonSchema=PERSON, maxTokens=3, temperature=0)
    assert result["finishReason"] == "length" and "json" not in result
    with pytest.raises(RemoteError):
        smol.prompt("x", jsonSchema={"type": "string", "pattern": "(unclosed"})
