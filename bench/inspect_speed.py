"""How fast can a model file be described without loading it? Three readers, measured.

``inspectModel`` must be fast on multi-GB files. The candidates:
- the sidecar's own header reader (``sidecar.engine``'s ``inspect``: reads only the header);
- llama.cpp's ``vocab_only`` load through llama-cpp-python (parses the header, builds the vocabulary);
- the ``gguf`` package's ``GGUFReader`` (parses the header and maps every tensor).

Each reads SmolLM2-135M (the embedded default) and the same file grown to 4 GiB by a sparse
hole after its data, so file size alone cannot hide in the numbers. Writes a Markdown table
to ``bench/results/inspect.md`` (or ``--out``).

    .venv/bin/python bench/inspect_speed.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import gguf
import llama_cpp

from sidecar.engine.llamacpp import LlamaCppEngine
from sidecar.model_paths import default_model_path

_GROWN_SIZE = 4 * 1024**3
_REPEATS = 7


def _own_reader(path: str) -> object:
    return LlamaCppEngine().inspect(path)


def _vocab_only(path: str) -> object:
    llm = llama_cpp.Llama(path, vocab_only=True, verbose=False)
    facts = (llm.metadata, llm.n_vocab())
    llm.close()
    return facts


def _gguf_reader(path: str) -> object:
    reader = gguf.GGUFReader(path)
    return {field.name: field.types for field in reader.fields.values()}, len(reader.tensors)


READERS: dict[str, Callable[[str], object]] = {
    "sidecar's header reader (inspectModel)": _own_reader,
    "llama.cpp vocab_only load": _vocab_only,
    "gguf.GGUFReader": _gguf_reader,
}


def _median_ms(read: Callable[[str], object], path: str) -> float:
    read(path)  # once to warm the page cache: every reader then sees the same cached file
    times = []
    for _ in range(_REPEATS):
        started = time.perf_counter()
        read(path)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def _grown_copy(source: str, directory: str) -> str:
    """``source`` followed by a sparse hole up to 4 GiB (no disk used for the hole)."""
    grown = os.path.join(directory, "grown.gguf")
    with open(source, "rb") as original, open(grown, "wb") as copy:
        copy.write(original.read())
        copy.truncate(_GROWN_SIZE)
    return grown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "inspect.md")
    args = parser.parse_args()
    model = default_model_path()
    with tempfile.TemporaryDirectory() as directory:
        size_mb = os.path.getsize(model) / 1e6
        files = {
            f"SmolLM2-135M Q4_1 ({size_mb:.0f} MB)": model,
            "the same, grown to 4 GiB": _grown_copy(model, directory),
        }
        rows = [
            f"| {reader} | "
            + " | ".join(f"{_median_ms(read, path):.1f} ms" for path in files.values())
            + " |"
            for reader, read in READERS.items()
        ]
    table = "\n".join(
        [
            f"Median of {_REPEATS} reads each, page cache warm (`bench/inspect_speed.py`).",
            "",
            "| reader | " + " | ".join(files) + " |",
            "| --- |" + " --- |" * len(files),
            *rows,
        ]
    )
    args.out.write_text("# Describing a model without loading it\n\n" + table + "\n")
    print(table)


if __name__ == "__main__":
    main()
