"""The protocol vectors, replayed against the real sidecar and the tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest

from .vectors import VECTOR_DIR, VectorRun, matches

VECTOR_FILES = sorted(VECTOR_DIR.glob("*.jsonl"))


def test_there_are_vectors() -> None:
    assert len(VECTOR_FILES) >= 8


@pytest.mark.parametrize("path", VECTOR_FILES, ids=lambda path: path.stem)
def test_vector(path: Path, tiny_model: Path, eos_model: Path, tmp_path: Path) -> None:
    placeholders = {
        "${TINY_MODEL}": str(tiny_model),
        "${EOS_MODEL}": str(eos_model),
        "${MISSING_MODEL}": str(tmp_path / "missing.gguf"),
    }
    VectorRun(path, placeholders).run()


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ({"a": "$integer"}, {"a": 1}, True),
        ({"a": "$integer"}, {"a": 1.5}, False),
        ({"a": "$any"}, {}, False),
        ({"a": 1}, {"a": 1, "b": 2}, False),
        ([1, "$string"], [1, "x"], True),
        ([1], [1, 2], False),
        (True, 1, False),
        (None, None, True),
        ("$boolean", False, True),
    ],
)
def test_pattern_rules(pattern: object, value: object, expected: bool) -> None:
    assert matches(pattern, value) is expected
