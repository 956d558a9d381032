"""Constrained output: a GBNF grammar or a JSON Schema the reply must follow."""

from __future__ import annotations

from typing import Any

import jsonschema
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


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"grammar": "root ::= yes |"}, "grammar"),
        ({"grammar": 'notroot ::= "x"'}, "grammar"),
        ({"jsonSchema": {"type": "no-such-type"}}, "jsonSchema"),
        ({"jsonSchema": {"$ref": "https://example.invalid/schema.json"}}, "jsonSchema"),  # never fetched
        ({"grammar": 'root ::= "a"', "jsonSchema": {"type": "object"}}, ""),
    ],
)
def test_unusable_grammars_and_schemas_are_invalid_params(
    loaded: RawSidecar, params: dict[str, Any], field: str
) -> None:
    error = loaded.error("prompt", {"prompt": "hi", "maxTokens": 4, **params})
    assert error["code"] == -32602 and error["data"] == {"field": field}, error
    assert loaded.request("ping") == {}


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
