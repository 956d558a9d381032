"""Embeddings: one vector per input, from a second context of the loaded file."""

from __future__ import annotations

import math

import pytest

from sidecar.client import RemoteError, SidecarClient

from .harness import RawSidecar


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_similar_texts_have_closer_vectors(smol: SidecarClient) -> None:
    texts = ["The cat sat on the mat.", "A kitten rested on the rug.", "Stock prices fell sharply today."]
    result = smol.request("embed", {"input": texts})
    cat, kitten, stocks = result["embeddings"]
    assert len(cat) == 576  # SmolLM2-135M's width
    assert math.isclose(math.sqrt(_dot(cat, cat)), 1.0, rel_tol=1e-4)  # normalized by default
    assert _dot(cat, kitten) > _dot(cat, stocks)
    assert result["promptTokens"] > 15


def test_embedding_and_generation_share_the_model(smol: SidecarClient) -> None:
    raw = smol.request("embed", {"input": "hello", "normalize": False})["embeddings"][0]
    assert not math.isclose(math.sqrt(_dot(raw, raw)), 1.0, rel_tol=1e-3)
    assert smol.prompt("Hello", maxTokens=3, temperature=0)["usage"]["completionTokens"] == 3


def test_embed_errors(loaded: RawSidecar) -> None:
    assert loaded.error("embed", {"input": []})["data"] == {"field": "input"}
    too_long = loaded.error("embed", {"input": "hello " * 3000})
    assert too_long["code"] == -32006 and too_long["data"]["contextSize"] == 2048
    assert loaded.error("embed", {"input": "x", "modelId": "nope"})["code"] == -32005
    assert len(loaded.request("embed", {"input": ["a", "b"]})["embeddings"]) == 2


def test_the_client_raises_remote_errors_for_embed(smol: SidecarClient) -> None:
    with pytest.raises(RemoteError):
        smol.request("embed", {"input": 5})
