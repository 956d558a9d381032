"""The stdout guard in the real process: noise on fd 1 from inside the sidecar never reaches the host.

A ``sitecustomize`` module (found first on ``PYTHONPATH``) runs in the
sidecar before ``sidecar.cli``: it watches imports, and once
``sidecar.engine.llamacpp`` is loaded, makes the engine write to stdout in
three ways (``os.write(1, …)``, ``print``, and C's ``puts`` through libc)
while a model loads (at each of llama.cpp's progress reports) and for every
piece of text a stream produces. It also notes whether fd 1 still was the
host's pipe when ``llama_cpp`` was first imported.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import RawSidecar
from .tiny_model import LETTERS_FOREVER

KINDS = (b"os-write", b"print", b"native")
GUARDED = b"fd 1 moved before llama_cpp was imported"
UNGUARDED = b"fd 1 was the protocol pipe when llama_cpp was imported"

SITECUSTOMIZE = textwrap.dedent(
    f"""
    import ctypes
    import importlib.abc
    import importlib.machinery
    import os

    _PIPE = os.fstat(1)  # the host's stdout pipe, before the sidecar touches fd 1
    _LIBC = ctypes.CDLL(None)


    def noise(where):
        os.write(1, b"noise os-write " + where.encode() + b"\\n")
        print("noise print " + where)
        _LIBC.puts(b"noise native " + where.encode())
        _LIBC.fflush(None)


    def _patch(module):
        original_load = module.LlamaCppEngine.load
        original_generate = module.LlamaCppModel.generate

        def load(self, path, options, *, progress=None, should_stop=None):
            def noisy_progress(value):  # called from inside llama.cpp's load, per tensor
                noise("load")
                if progress is not None:
                    progress(value)

            return original_load(self, path, options, progress=noisy_progress, should_stop=should_stop)

        def generate(self, prompt_tokens, sampling, on_text, should_stop):
            def noisy_text(text):
                noise("stream")
                on_text(text)

            return original_generate(self, prompt_tokens, sampling, noisy_text, should_stop)

        module.LlamaCppEngine.load = load
        module.LlamaCppModel.generate = generate


    class _Watch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "llama_cpp":
                now = os.fstat(1)
                same = (now.st_dev, now.st_ino) == (_PIPE.st_dev, _PIPE.st_ino)
                os.write(2, {UNGUARDED!r} if same else {GUARDED!r})
                os.write(2, b"\\n")
            if name != "sidecar.engine.llamacpp":
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path, target)
            run_module = spec.loader.exec_module

            def exec_module(module):
                run_module(module)
                _patch(module)

            spec.loader.exec_module = exec_module
            return spec


    import sys

    sys.meta_path.insert(0, _Watch())
    """
)


@pytest.fixture
def noisy(tmp_path: Path) -> Iterator[RawSidecar]:
    """A live sidecar whose engine writes noise to stdout."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    sidecar = RawSidecar(env={"PYTHONPATH": str(site)})
    yield sidecar
    sidecar.stop()


def test_noise_on_fd_1_while_loading_and_streaming_goes_to_stderr(
    noisy: RawSidecar, tiny_model: Path
) -> None:
    noisy.initialize()
    for round_number in range(3):
        noisy.request("loadModel", {"modelPath": str(tiny_model), "modelId": f"m{round_number}"})
    # A chunk a token: the random model's own text may show nothing.
    params = {"prompt": "hello", "maxTokens": 60, "temperature": 0, "grammar": LETTERS_FOREVER}
    stream = noisy.send_request("promptStream", params)
    pings = [noisy.send_request("ping") for _ in range(20)]  # answered from the loop thread meanwhile
    chunks, response = noisy.collect_stream(stream)
    assert response["result"]["finishReason"] == "length" and len(chunks) > 10
    for ping in pings:
        assert noisy.response(ping)["result"] == {}
    assert noisy.request("shutdown") is None
    assert noisy.wait_exit() == 0
    noisy.stop()  # waits until every line of both pipes is read
    # The harness parsed every stdout line as a JSON-RPC message valid against the schemas.
    assert not noisy.bad_lines, noisy.bad_lines[:3]
    stderr = b"".join(noisy.stderr_lines)
    for kind in KINDS:
        for where in (b"load", b"stream"):
            assert b"noise " + kind + b" " + where + b"\n" in stderr, (kind, where)
    # Imported once, so exactly one of the two notes was written.
    assert GUARDED in stderr, "llama_cpp was imported before the guard moved fd 1"
