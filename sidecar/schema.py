"""The protocol's JSON Schemas, loaded once, used to check params at run time.

The files in ``protocol/schema`` are the single source of truth for every
method's params and result; the server validates params against them, so the
documented contract and the running code cannot disagree. This module knows
schema files and turns validation failures into ``InvalidParams`` that name
the field. It knows nothing of what the methods do.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from jsonschema.validators import extend
from referencing import Registry, Resource

from .errors import InvalidParams

__all__ = ["SCHEMA_DIR", "method_names", "notification_names", "params_validator", "validator_for"]

_BASE_URI = "https://llama-sidecar.invalid/schema/"  # never fetched: every file is in the registry
_MAX_VALUE_CHARS = 60


def _schema_dir() -> Path:
    packaged = Path(__file__).with_name("_schema")  # wheels carry a copy here
    return packaged if packaged.is_dir() else Path(__file__).resolve().parent.parent / "protocol" / "schema"


SCHEMA_DIR = _schema_dir()

_STANDARD_ITEMS = Draft202012Validator.VALIDATORS["items"]
# Keywords that say nothing a value must satisfy.
_ANNOTATIONS = frozenset({"title", "description", "$comment", "default", "examples"})


def _items(validator: Any, items: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    """``items``, with long arrays of simple values checked at C-loop speed.

    jsonschema checks an item in about 5 µs: the 1,048,576 ids a detokenize may
    carry took 5.2 s, and 100,000 history messages 1.4 s, on the event loop. A
    predicate compiled from the item schema passes what is surely valid; only an
    item it does not pass is checked (and described) the standard way.
    """
    check = _quick_check(items) if isinstance(items, dict) and isinstance(instance, list) else None
    if check is None or "prefixItems" in schema:
        yield from _STANDARD_ITEMS(validator, items, instance, schema)
        return
    for index, item in enumerate(instance):
        if not check(item):
            yield from validator.descend(item, items, path=index)


def _quick_check(schema: dict[str, Any]) -> Callable[[Any], bool] | None:
    """A predicate true only of values ``schema`` accepts, for the protocol's simple schemas; else None."""
    key = id(schema)
    if key not in _QUICK_CHECKS:
        _QUICK_CHECKS[key] = (schema, _compile_check(schema))
    return _QUICK_CHECKS[key][1]


_QUICK_CHECKS: dict[int, tuple[dict[str, Any], Callable[[Any], bool] | None]] = {}


def _compile_check(schema: dict[str, Any]) -> Callable[[Any], bool] | None:
    keywords = set(schema) - _ANNOTATIONS
    kind = schema.get("type")
    if kind == "integer" and keywords <= {"type", "minimum", "maximum"}:
        low, high = schema.get("minimum", -math.inf), schema.get("maximum", math.inf)
        return lambda value: type(value) is int and low <= value <= high
    if kind is None and keywords == {"enum"} and all(type(choice) is str for choice in schema["enum"]):
        choices = frozenset(schema["enum"])
        return lambda value: type(value) is str and value in choices
    if kind == "string" and keywords <= {"type", "minLength", "maxLength", "enum"}:
        shortest, longest = schema.get("minLength", 0), schema.get("maxLength", math.inf)
        allowed = frozenset(schema["enum"]) if "enum" in schema else None
        return lambda value: (
            type(value) is str and shortest <= len(value) <= longest and (allowed is None or value in allowed)
        )
    if kind == "object" and keywords <= {"type", "properties", "required", "additionalProperties"}:
        if schema.get("additionalProperties") is not False:
            return None
        members = {name: _compile_check(member) for name, member in schema.get("properties", {}).items()}
        if any(check is None for check in members.values()):
            return None
        required = frozenset(schema.get("required", ()))
        return lambda value: (
            type(value) is dict
            and required <= value.keys()
            and all(name in members and members[name](member) for name, member in value.items())  # type: ignore[misc]
        )
    return None


# JSON Schema counts 512.0 as an integer; llama.cpp's C types do not, so an
# integer param must arrive as a JSON integer.
_StrictValidator = extend(  # type: ignore[no-untyped-call]
    Draft202012Validator,
    validators={"items": _items},
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _checker, value: isinstance(value, int) and not isinstance(value, bool)
    ),
)


@functools.cache
def _registry() -> Registry[Any]:
    resources = [
        (
            _BASE_URI + path.relative_to(SCHEMA_DIR).as_posix(),
            Resource.from_contents(orjson.loads(path.read_bytes())),
        )
        for path in sorted(SCHEMA_DIR.rglob("*.json"))
    ]
    return Registry().with_resources(resources)


def method_names() -> frozenset[str]:
    """Every method that has a schema file."""
    return frozenset(path.stem for path in (SCHEMA_DIR / "methods").glob("*.json"))


def notification_names() -> frozenset[str]:
    """Every notification that has a schema file."""
    return frozenset(path.stem for path in (SCHEMA_DIR / "notifications").glob("*.json"))


@functools.cache
def validator_for(reference: str) -> Draft202012Validator:
    """A validator for a schema reference such as ``methods/prompt.json#/$defs/params``.

    Every ``$ref`` is replaced by what it points to once, here: resolving
    references on each validation cost most of a ``ping``'s time.
    """
    schema = _inline({"$ref": reference}, _registry().resolver(_BASE_URI))
    validator: Draft202012Validator = _StrictValidator(schema)
    return validator


def _inline(schema: Any, resolver: Any) -> Any:  # referencing does not export its Resolver type
    """``schema`` with each ``$ref`` replaced by its target (the protocol's schemas are not recursive)."""
    if isinstance(schema, list):
        return [_inline(item, resolver) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        resolved = resolver.lookup(schema["$ref"])
        siblings = {key: value for key, value in schema.items() if key != "$ref"}
        return {**_inline(resolved.contents, resolved.resolver), **_inline(siblings, resolver)}
    return {key: _inline(value, resolver) for key, value in schema.items()}


def params_validator(method: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A function that returns valid params unchanged or raises ``InvalidParams``."""
    validator = validator_for(f"methods/{method}.json#/$defs/params")
    empty_is_valid = validator.is_valid({})  # ping, listModels, …: most calls send no params

    def validate(params: dict[str, Any]) -> dict[str, Any]:
        if not params and empty_is_valid:
            return params
        if validator.is_valid(params):  # stops at the first failure; errors are described only then
            return params
        error = best_match(validator.iter_errors(params))
        assert error is not None
        field, problem = _describe(error)
        where = f"'{field}' " if field else ""
        raise InvalidParams(f"Invalid params: {where}{problem}.", {"field": field})

    return validate


def _describe(error: ValidationError) -> tuple[str, str]:
    """The field a validation error is about, and what is wrong with it, in plain words."""
    path = "/".join(str(part) for part in error.absolute_path)
    # jsonschema types these loosely; each case below knows what its keyword holds.
    instance: Any = error.instance
    expected: Any = error.validator_value
    schema: Any = error.schema
    match error.validator:
        case "required":
            missing = next(name for name in expected if name not in instance)
            return _join(path, missing), "is required"
        case "additionalProperties":
            known = schema.get("properties", {})
            unknown = next(name for name in instance if name not in known)
            return _join(path, unknown), "is not a known param"
        case "type":
            wanted = " or ".join(expected) if isinstance(expected, list) else expected
            return path, f"must be of type {wanted}, not {_short(instance)}"
        case "minimum" | "maximum" | "exclusiveMinimum" | "exclusiveMaximum":
            words = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}
            return path, f"must be {words[str(error.validator)]} {expected}"
        case "minLength" | "maxLength" | "minItems" | "maxItems":
            bound = "at least" if str(error.validator).startswith("min") else "at most"
            unit = "characters" if str(error.validator).endswith("Length") else "items"
            return path, f"must have {bound} {expected} {unit}"
        case "oneOf" if "x-oneOfMessage" in schema:
            return path, str(schema["x-oneOfMessage"])
        case "not" if "x-notMessage" in schema:
            return path, str(schema["x-notMessage"])
        case "enum" | "const":
            return (
                path,
                f"must be one of {expected!r}" if error.validator == "enum" else f"must be {expected!r}",
            )
        case _:
            return path, error.message[:200]


def _join(path: str, name: str) -> str:
    return f"{path}/{name}" if path else name


def _short(value: object) -> str:
    text = orjson.dumps(value).decode() if not isinstance(value, bytes) else repr(value)
    return text if len(text) <= _MAX_VALUE_CHARS else text[:_MAX_VALUE_CHARS] + "…"
