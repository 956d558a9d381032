"""The spec, the schemas and the code describe one protocol: these fail when they drift apart."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest
from jsonschema import Draft202012Validator

from sidecar.errors import ERROR_CLASSES
from sidecar.methods import build_method_table
from sidecar.schema import SCHEMA_DIR, method_names, notification_names
from sidecar.service import ModelService
from sidecar.settings import Settings

from .harness import ROOT

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
