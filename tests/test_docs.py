"""The Python examples of docs/llm-services.md run as written, against the real sidecar."""

from __future__ import annotations

import functools
import hashlib
import re
import shutil
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from .harness import ROOT

GUIDE = ROOT / "docs" / "llm-services.md"


def _python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", GUIDE.read_text(), flags=re.MULTILINE | re.DOTALL)


class _QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def served(tiny_model: Path, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server offering a copy of the tiny model: (its URL, the file)."""
    folder = tmp_path / "served"
    folder.mkdir()
    model = Path(shutil.copy(tiny_model, folder / "tiny.gguf"))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietFiles, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/tiny.gguf", model
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_the_guide_has_its_python_examples() -> None:
    blocks = _python_blocks()
    assert len(blocks) == 2 and "SidecarClient()" in blocks[0] and "download_model" in blocks[1]


def test_the_python_examples_run_in_order(
    default_model: str,
    served: tuple[str, Path],
    models_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The first block uses the embedded SmolLM2 (hence default_model: skipped without it). The
    # download block names what a reader has at hand; here a local server stands in for the web.
    url, model = served
    expected = hashlib.sha256(model.read_bytes()).hexdigest()
    namespace: dict[str, object] = {"models_dir": str(models_dir), "url": url, "expected": expected}
    for block in _python_blocks():
        exec(compile(block, str(GUIDE), "exec"), namespace)  # the reader's session: one namespace
    printed = capsys.readouterr().out
    assert "'promptTokens'" in printed and "'completionTokens'" in printed  # the stream's usage
    assert "Q4_1" in printed  # inspect_model("default")
    assert str(model.stat().st_size) in printed.split()  # the download's progress
    downloaded = models_dir / "tiny.gguf"
    assert hashlib.sha256(downloaded.read_bytes()).hexdigest() == expected
