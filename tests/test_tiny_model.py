"""What the tiny models guarantee by construction: the ground the other tests stand on.

A random model's text depends on floating-point details that differ between CPUs and
llama.cpp builds, so the suite relies only on properties of the weights themselves,
proved here from the written tensors (and llama.cpp's own list of end-of-generation
tokens), never from what a run happens to generate.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import cast

import gguf
import llama_cpp
import numpy as np
import pytest

from sidecar.engine.api import LoadOptions
from sidecar.engine.llamacpp import LlamaCppEngine, LlamaCppModel

from .tiny_model import write_tiny_model

RMS_EPSILON = 1e-5  # the tiny model's llama.attention.layer_norm_rms_epsilon


def _tensors(path: Path) -> dict[str, np.ndarray]:
    return {tensor.name: np.array(tensor.data, dtype=np.float64) for tensor in gguf.GGUFReader(path).tensors}


def _tokens(path: Path) -> list[str]:
    field = gguf.GGUFReader(path).fields["tokenizer.ggml.tokens"]
    return [bytes(field.parts[index]).decode() for index in field.data]


def test_the_default_model_never_ends_under_greedy_decoding(tiny_model: Path) -> None:
    model = cast(LlamaCppModel, LlamaCppEngine().load(str(tiny_model), LoadOptions(context_size=256)))
    try:
        ends = [
            token
            for token in range(model.facts.vocab_size)
            if llama_cpp.llama_vocab_is_eog(model._vocab, token)
        ]
    finally:
        model.close()
    assert [_tokens(tiny_model)[token] for token in ends] == ["</s>", "<|im_end|>"]
    output = _tensors(tiny_model)["output.weight"]
    assert not output[ends].any()  # their logit is exactly 0, whatever the hidden state
    rest = np.delete(output, ends, axis=0)
    # Gordan's alternative: weights y > 0 with rest^T y = 0 make sum(y * (rest @ h)) = 0 for
    # every h; rest has full rank, so for h != 0 (the final norm's output never is 0) some
    # term, and so some other token's logit, is positive: greedy decoding never picks an end.
    basis, _ = np.linalg.qr(rest)
    y = np.ones(len(rest))
    for _ in range(100):  # alternate projections: onto rest^T y = 0, then onto y >= 1
        y -= basis @ (basis.T @ y)
        if y.min() > 0:
            break
        y = np.maximum(y, 1)
    assert np.abs(rest.T @ y).max() < 1e-9
    assert y.min() > 0
    assert np.linalg.matrix_rank(rest) == rest.shape[1]


def _rest_of_the_state_at_most(tensors: dict[str, np.ndarray], heads: int = 4) -> float:
    """A bound on the length of the residual stream outside dimension 0, for any input."""
    embeddings = tensors["token_embd.weight"]
    width = math.sqrt(embeddings.shape[1])  # every RMS norm (weights 1) outputs this length
    bound = float(np.linalg.norm(embeddings[:, 1:], axis=1).max())
    for block in range(sum(name.endswith("attn_v.weight") for name in tensors)):
        norm = {  # spectral norms
            name: float(np.linalg.norm(tensors[f"blk.{block}.{name}.weight"], 2))
            for name in ("attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
        }
        # Each head mixes its value vectors convexly; |silu(g) * u| <= |g| |u|.
        bound += math.sqrt(heads) * norm["attn_output"] * norm["attn_v"] * width
        bound += norm["ffn_down"] * norm["ffn_gate"] * norm["ffn_up"] * width**2
    return bound


@pytest.mark.parametrize("pins", [None, {"a": 40.0, "b": 30.0}], ids=["eos-always", "a-and-b"])
def test_pinned_logits_outrank_every_other_whatever_the_input(
    eos_model: Path, tmp_path: Path, pins: dict[str, float] | None
) -> None:
    path = eos_model if pins is None else write_tiny_model(tmp_path / "pinned.gguf", pinned_logits=pins)
    pins = pins or {"</s>": 50.0}
    tensors = _tensors(path)
    embeddings, output = tensors["token_embd.weight"], tensors["output.weight"]
    width = math.sqrt(embeddings.shape[1])
    # Dimension 0 of the residual stream is 1 for every token, and no layer writes to it.
    assert (embeddings[:, 0] == 1).all()
    assert not any(
        tensors[name][0].any() for name in tensors if name.endswith(("attn_output.weight", "ffn_down.weight"))
    )
    # So after the final norm it is at least width / sqrt(1 + rest^2 + eps * width^2), and a
    # pinned logit at least its value times this:
    least = 1 / math.sqrt(1 + _rest_of_the_state_at_most(tensors) ** 2 + RMS_EPSILON * width**2)
    pinned = [_tokens(path).index(text) for text in pins]
    assert not output[pinned, 1:].any()  # a pinned row reads dimension 0 only: exact ratios
    assert list(output[pinned, 0] * width) == pytest.approx(list(pins.values()))
    # Any other logit is at most its row's length times the state's (width).
    most = float(np.linalg.norm(np.delete(output, pinned, axis=0), axis=1).max()) * width
    assert least > 0.09 and most < 1.7
    # So a pinned value of 20 (b's 30 cut by a repeat penalty of 1.5) still outranks every other token.
    assert least * 20 > most
