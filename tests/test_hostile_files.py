"""Files a user might pick, or an attacker might plant: each gets a clear error, and the sidecar lives on."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from sidecar.engine.api import LoadOptions
from sidecar.engine.llamacpp import LlamaCppEngine
from sidecar.errors import ModelLoadFailed

from .harness import RawSidecar
from .tiny_model import write_tiny_model


def _empty(path: Path, _model: bytes) -> None:
    path.write_bytes(b"")


def _random_bytes(path: Path, _model: bytes) -> None:
    path.write_bytes(random.Random(1).randbytes(100_000))


def _truncated_header(path: Path, model: bytes) -> None:
    path.write_bytes(model[:64])


def _truncated_tensor_data(path: Path, model: bytes) -> None:
    path.write_bytes(model[: len(model) - 1000])


def _text_named_gguf(path: Path, _model: bytes) -> None:
    path.write_text("# not a model\n" * 100)


def _wrong_architecture(path: Path, model: bytes) -> None:
    path.write_bytes(model.replace(b"llama", b"zzzzz", 1))


def _directory(path: Path, _model: bytes) -> None:
    path.mkdir()


def _symlink_loop(path: Path, _model: bytes) -> None:
    other = path.with_name("other.gguf")
    path.symlink_to(other)
    other.symlink_to(path)


def _fifo(path: Path, _model: bytes) -> None:
    os.mkfifo(path)  # opening it would block forever


HOSTILE: dict[str, Callable[[Path, bytes], None]] = {
    "empty": _empty,
    "random bytes": _random_bytes,
    "truncated header": _truncated_header,
    "truncated tensor data": _truncated_tensor_data,
    "text named .gguf": _text_named_gguf,
    "unknown architecture": _wrong_architecture,
    "directory": _directory,
    "symlink loop": _symlink_loop,
    "fifo": _fifo,
}


@pytest.mark.parametrize("make", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_file_gets_a_load_error_and_a_good_model_loads_after(
    sidecar: RawSidecar, tiny_model: Path, tmp_path: Path, make: Callable[[Path, bytes], None]
) -> None:
    path = tmp_path / "hostile.gguf"
    make(path, tiny_model.read_bytes())
    error = sidecar.error("loadModel", {"modelPath": str(path)})
    assert error["code"] == -32003 and error["data"]["reason"], error
    assert sidecar.request("loadModel", {"modelPath": str(tiny_model)})["modelId"] == "tiny"


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (_wrong_architecture, "unknown model architecture: 'zzzzz'"),
        (_truncated_tensor_data, "data is not within the file bounds"),
    ],
    ids=["unknown architecture", "truncated tensor data"],
)
def test_the_error_carries_llama_cpp_own_reason(
    sidecar: RawSidecar, tiny_model: Path, tmp_path: Path, make: Callable[[Path, bytes], None], reason: str
) -> None:
    path = tmp_path / "hostile.gguf"
    make(path, tiny_model.read_bytes())
    error = sidecar.error("loadModel", {"modelPath": str(path)})
    assert reason in error["data"]["reason"] and reason in error["message"], error


def test_mutated_headers_never_crash_the_sidecar(
    sidecar: RawSidecar, tiny_model: Path, tmp_path: Path
) -> None:
    model = tiny_model.read_bytes()
    header_end = 20_000  # the key-value header and tensor table of the tiny model lie in front of this
    rng = random.Random(42)
    outcomes = {"loaded": 0, "refused": 0}
    for round_number in range(60):
        mutated = bytearray(model)
        for _ in range(rng.randint(1, 8)):
            mutated[rng.randrange(8, header_end)] = rng.randrange(256)
        path = tmp_path / f"mutant{round_number}.gguf"
        path.write_bytes(mutated)
        response = sidecar.response(sidecar.send_request("loadModel", {"modelPath": str(path)}))
        outcomes["loaded" if "result" in response else "refused"] += 1
        if "result" in response:
            sidecar.request("unloadModel", {"modelId": response["result"]["modelId"]})
        else:
            assert response["error"]["code"] in (-32003, -32602), response
    assert outcomes["refused"] > 0
    assert sidecar.request("loadModel", {"modelPath": str(tiny_model)})["modelId"] == "tiny"


def test_unreadable_file_is_refused_before_llama_cpp_opens_it(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tests run as root here, which reads any file; so the permission answer is simulated.
    monkeypatch.setattr(os, "access", lambda _path, _mode: False)
    with pytest.raises(ModelLoadFailed) as raised:
        LlamaCppEngine().load(str(tiny_model), LoadOptions())
    assert raised.value.data == {"reason": "permission denied"}


def test_an_extremely_long_token_is_decoded_whole(sidecar: RawSidecar, tmp_path: Path) -> None:
    long_token = "x" * 300  # llama-cpp-python's own detokenizer stops at 32 bytes
    path = write_tiny_model(tmp_path / "long-token.gguf", extra_tokens=(long_token,))
    vocab_size = sidecar.request("loadModel", {"modelPath": str(path), "contextSize": 512})["vocabSize"]
    assert sidecar.request("detokenize", {"tokens": [vocab_size - 1]}) == {"text": long_token}
    # The grammar allows only x's; some seeds pick the long token first, which then arrives whole.
    forced = {"prompt": "hi", "grammar": f'root ::= "{long_token}"', "temperature": 1.5, "maxTokens": 400}
    for seed in range(40):
        chunks, response = sidecar.stream({**forced, "seed": seed})
        assert response["result"]["text"] == long_token
        if response["result"]["usage"]["completionTokens"] == 1:
            assert chunks[0]["content"] == long_token
            return
    raise AssertionError("no seed sampled the long token")
