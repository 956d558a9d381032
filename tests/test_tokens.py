"""tokenize, detokenize, countTokens and inspectModel against real llama.cpp."""

from __future__ import annotations

import math
import struct
import time
from pathlib import Path

import gguf

from .harness import RawSidecar
from .tiny_model import LETTERS_FOREVER, write_tiny_model


def test_count_tokens_equals_what_a_prompt_evaluates(loaded: RawSidecar) -> None:
    for params in ({"prompt": "hello world, again"}, {"messages": [{"role": "user", "content": "hello"}]}):
        counted = loaded.request("countTokens", params)["promptTokens"]
        used = loaded.request("prompt", {**params, "maxTokens": 1})["usage"]["promptTokens"]
        assert counted == used, params


def test_tokenize_then_detokenize_gives_the_text_back(loaded: RawSidecar) -> None:
    text = "hello world é€ 日本"
    tokens = loaded.request("tokenize", {"text": text, "addBos": False})["tokens"]
    assert loaded.request("detokenize", {"tokens": tokens})["text"] == text


def test_token_methods_answer_while_the_model_generates(loaded: RawSidecar) -> None:
    # A chunk a token until the context is full: the random model's own text may show nothing.
    params = {"prompt": "hello", "temperature": 0, "grammar": LETTERS_FOREVER}
    stream = loaded.send_request("promptStream", params)
    assert loaded.next_message()["method"] == "streamChunk"
    started = time.monotonic()
    assert loaded.request("countTokens", {"prompt": "hello"})["promptTokens"] > 1
    assert time.monotonic() - started < 1.0
    assert loaded.request("cancel", {"requestId": stream}) == {"cancelled": True}


def test_unloading_while_tokenizing_is_safe(loaded: RawSidecar) -> None:
    text = "hello world " * 20_000
    requests = [loaded.send_request("tokenize", {"text": text}) for _ in range(5)]
    unload = loaded.send_request("unloadModel", {"modelId": "tiny"})
    for request_id in requests:
        response = loaded.response(request_id)
        assert "result" in response or response["error"]["code"] in (-32004, -32005), response
    assert loaded.response(unload)["result"] == {"unloaded": True}
    assert loaded.request("ping") == {}


def test_inspect_reads_the_header_without_loading(
    sidecar: RawSidecar, tiny_model: Path, default_model: str
) -> None:
    tiny = sidecar.request("inspectModel", {"modelPath": str(tiny_model)})
    assert tiny["parameterCount"] == 132_288 and tiny["quantization"] == "ALL_F32"
    smol = sidecar.request("inspectModel", {"modelPath": "default"})
    assert smol["quantization"] == "Q4_1" and smol["trainContextSize"] == 8192
    assert smol["metadata"]["general.architecture"] == "llama"
    assert 130_000_000 < smol["parameterCount"] < 140_000_000  # "135M"
    assert sidecar.request("listModels") == {"models": []}


def test_inspect_refuses_a_forged_tensor_table(sidecar: RawSidecar, tmp_path: Path) -> None:
    data = bytearray(write_tiny_model(tmp_path / "model.gguf").read_bytes())
    # The table entry: name, then a u32 dimension count and u64 dimensions (2 here).
    name = b"token_embd.weight"
    dims_at = data.index(name) + len(name) + 4
    data[dims_at : dims_at + 16] = struct.pack("<QQ", 2**40, 2**40)  # 2**80 weights: beyond 64 bits
    forged = tmp_path / "forged.gguf"
    forged.write_bytes(bytes(data))
    error = sidecar.error("inspectModel", {"modelPath": str(forged)})
    assert error["code"] == -32003 and "implausible tensor sizes" in error["data"]["reason"], error
    assert sidecar.request("ping") == {}


def test_inspect_leaves_out_metadata_json_cannot_carry(sidecar: RawSidecar, tmp_path: Path) -> None:
    path = tmp_path / "floats.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(64)
    for key, value in (("test.nan", math.nan), ("test.infinite", math.inf), ("test.half", 0.5)):
        writer.add_float32(key, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    metadata = sidecar.request("inspectModel", {"modelPath": str(path)})["metadata"]
    assert metadata["test.half"] == 0.5 and "test.nan" not in metadata and "test.infinite" not in metadata
