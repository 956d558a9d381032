"""Files a user might pick, or an attacker might plant: each gets a clear error, and the sidecar lives on."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from gguf import GGUFValueType
from gguf.gguf_writer import GGUFValue

from sidecar.engine.api import LoadOptions
from sidecar.engine.gguf_checks import check_metadata
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


def _uint32(value: int | list[int]) -> GGUFValue:
    if isinstance(value, list):
        return GGUFValue(value, GGUFValueType.ARRAY, GGUFValueType.UINT32)
    return GGUFValue(value, GGUFValueType.UINT32)


# Single metadata fields llama.cpp checks with assertions (GGML_ASSERT): each killed the
# process with SIGABRT at load (the pooling type, at the first embed) before the check.
# Each with the start of the reason the load is refused with.
_EXPERTS = {"llama.expert_count": _uint32(4), "llama.expert_used_count": _uint32(1)}
ABORTING_FIELDS: dict[str, tuple[dict[str, GGUFValue], str]] = {
    "no layers": ({"llama.block_count": _uint32(0)}, "llama.block_count is 0; llama.cpp needs 1 to 512"),
    "600 layers": ({"llama.block_count": _uint32(600)}, "llama.block_count is 600"),
    "more prediction layers than layers": (
        {"llama.nextn_predict_layers": _uint32(5)},
        "llama.nextn_predict_layers is 5; llama.cpp needs at most 2",
    ),
    "100,000 experts": (
        {**_EXPERTS, "llama.expert_count": _uint32(100_000)},
        "llama.expert_count is 100000; llama.cpp needs at most 1024",
    ),
    "more experts used than exist": (
        {**_EXPERTS, "llama.expert_used_count": _uint32(8)},
        "llama.expert_used_count is 8; llama.cpp needs at most expert_count (4)",
    ),
    "a layer using more experts than exist": (
        {**_EXPERTS, "llama.expert_used_count": _uint32([1, 8])},
        "llama.expert_used_count is 8",
    ),
    "experts, none used": ({"llama.expert_count": _uint32(4)}, "llama.expert_used_count is 0"),
    "experts used without experts": ({"llama.expert_used_count": _uint32(1)}, "llama.expert_used_count is 1"),
    "as many expert groups as experts": (
        {**_EXPERTS, "llama.expert_group_count": _uint32(4)},
        "llama.expert_group_count is 4",
    ),
    "expert groups not dividing the experts": (
        {**_EXPERTS, "llama.expert_group_count": _uint32(3)},
        "llama.expert_group_count is 3",
    ),
    "all expert groups used": (
        {**_EXPERTS, "llama.expert_group_count": _uint32(2), "llama.expert_group_used_count": _uint32(2)},
        "llama.expert_group_used_count is 2",
    ),
    "expert groups without experts": (
        {"llama.expert_group_count": _uint32(1)},
        "llama.expert_group_count is 1",
    ),
    "pooling type 99": (
        {"llama.pooling_type": _uint32(99)},
        "llama.pooling_type is 99; llama.cpp needs 0 to 4",
    ),
    "byte tokens in a WordPiece vocabulary": (
        {"tokenizer.ggml.model": GGUFValue("bert", GGUFValueType.STRING)},
        "the 'bert' (WordPiece) vocabulary has byte tokens",
    ),
    "unknown rope scaling": (
        {"llama.rope.scaling.type": GGUFValue("zzz", GGUFValueType.STRING)},
        "llama.rope.scaling.type is zzz; llama.cpp needs one of none, linear, yarn, longrope",
    ),
}


@pytest.mark.parametrize(("fields", "reason"), ABORTING_FIELDS.values(), ids=ABORTING_FIELDS.keys())
def test_a_field_llama_cpp_would_abort_on_is_refused_before_it_loads(
    sidecar: RawSidecar, tiny_model: Path, tmp_path: Path, fields: dict[str, GGUFValue], reason: str
) -> None:
    path = write_tiny_model(tmp_path / "crafted.gguf", metadata=fields)
    error = sidecar.error("loadModel", {"modelPath": str(path)})
    assert error["code"] == -32003 and error["data"]["reason"].startswith(reason), error
    assert sidecar.request("loadModel", {"modelPath": str(tiny_model)})["modelId"] == "tiny"
    assert len(sidecar.request("embed", {"input": "still alive"})["embeddings"]) == 1


def test_a_per_layer_array_for_more_layers_than_llama_cpp_holds_is_refused(tmp_path: Path) -> None:
    fields = {"llama.attention.head_count": _uint32([4] * 600)}
    path = write_tiny_model(tmp_path / "crafted.gguf", metadata=fields)
    with pytest.raises(ModelLoadFailed) as raised:
        LlamaCppEngine().load(str(path), LoadOptions())
    assert raised.value.data == {"reason": "llama.attention.head_count lists 600 layers, more than 512"}


def test_the_limits_themselves_pass_the_metadata_check() -> None:
    check_metadata(
        {
            "general.architecture": "llama",
            "llama.block_count": 512,
            "llama.nextn_predict_layers": 512,
            "llama.expert_count": 1024,
            "llama.expert_used_count": [1, 1024],
            "llama.expert_group_count": 512,
            "llama.expert_group_used_count": 511,
            "llama.pooling_type": 4,
            "llama.rope.scaling.type": "longrope",
        }
    )
    check_metadata({"general.architecture": "llama", "llama.block_count": 1, "llama.pooling_type": 0})
    check_metadata({"tokenizer.ggml.model": "bert", "tokenizer.ggml.token_type": [3, 1, 1, 4]})
    # Of a type llama.cpp does not take: left to llama.cpp, which reports it as an error.
    check_metadata({"general.architecture": "llama", "llama.block_count": 2.0, "llama.expert_count": "4"})
