"""The protocol vectors, replayed against the real sidecar and the tiny models."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from .vectors import VECTOR_DIR, VectorRun, matches

VECTOR_FILES = sorted(VECTOR_DIR.glob("*.jsonl"))
_PLACEHOLDER = re.compile(r'"(\$\{[A-Z_]+\})"')


def _placeholders(tiny_model: Path, eos_model: Path, plain_model: Path, tmp_path: Path) -> dict[str, str]:
    """The README's placeholders; the models directory is fresh for each file (downloads write there)."""
    models_dir = tmp_path / "allowed"
    models_dir.mkdir()
    not_a_model = tmp_path / "not-a-model.gguf"
    not_a_model.write_text("This is a text file, not a GGUF model.\n")
    return {
        "${TINY_MODEL}": str(tiny_model),
        "${EOS_MODEL}": str(eos_model),
        "${PLAIN_MODEL}": str(plain_model),
        "${MISSING_MODEL}": str(tmp_path / "missing.gguf"),
        "${NOT_A_MODEL}": str(not_a_model),
        "${MODELS_DIR}": str(models_dir),
        "${ALLOWED_MODEL}": str(shutil.copyfile(tiny_model, models_dir / "allowed.gguf")),
    }


def test_there_are_vectors() -> None:
    assert len(VECTOR_FILES) >= 8


def test_every_placeholder_is_documented_and_provided(
    tiny_model: Path, eos_model: Path, plain_model: Path, tmp_path: Path
) -> None:
    # The TypeScript runner has the same check: the README's table keeps the two in step.
    used = {name for path in VECTOR_FILES for name in _PLACEHOLDER.findall(path.read_text())}
    readme = (VECTOR_DIR / "README.md").read_text()
    documented = {
        name for line in readme.splitlines() if line.startswith("| `") for name in _PLACEHOLDER.findall(line)
    }
    assert used <= documented
    assert set(_placeholders(tiny_model, eos_model, plain_model, tmp_path)) == documented


@pytest.mark.parametrize("path", VECTOR_FILES, ids=lambda path: path.stem)
def test_vector(path: Path, tiny_model: Path, eos_model: Path, plain_model: Path, tmp_path: Path) -> None:
    VectorRun(path, _placeholders(tiny_model, eos_model, plain_model, tmp_path)).run()


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
