"""A long text tokenized in pieces gives exactly the whole text's tokens, on both kinds of vocabulary.

The tiny models have a SentencePiece ("llama") vocabulary with byte fallback; the
embedded SmolLM2 a GPT-2-style BPE one with its pre-tokenizer. Each is checked on
prose, code, several scripts, whitespace runs and chat markup, with pieces cut
wherever a cut is allowed (a piece size of one character), against llama.cpp's own
tokenization of the whole text in one call. Also: what is refused, the count that
stops at a limit, and the cancel between pieces.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import pytest
from gguf.gguf_writer import GGUFValue
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.engine.api import LoadOptions, UnbrokenText
from sidecar.engine.llamacpp import LONGEST_STRETCH, LONGEST_STRETCH_SPM, LlamaCppEngine, LlamaCppModel
from sidecar.errors import RequestCancelled

from .harness import ROOT
from .tiny_model import _vocabulary, write_tiny_model

_RNG = random.Random(17)
CORPORA = {
    # U+2581 itself is what SentencePiece writes for a space, and comes back as one (§3).
    "prose": (ROOT / "protocol" / "PROTOCOL.md").read_text()[:40_000].replace("\u2581", "_"),
    "code": "".join(
        (ROOT / path).read_text() for path in ("sidecar/rpc.py", "electron-example/client/src/framing.ts")
    ),
    "multilingual": (
        "Le café coûte 3,50 €. Größe: groß. 日本語のテキストです。中文文本，没有空格。Русский текст. "
        "العربية نص. हिन्दी पाठ. 😀 emoji 👍🏽 and naïve façade. Ελληνικά. 한국어 텍스트입니다.\n"
    )
    * 30,
    "whitespace runs": "".join(
        _RNG.choice(
            ["a", "b", " ", "  ", "    ", "\t", "\n", "\n\n", " \n ", "\r\n", "x y", "\u00a0", "\u3000"]
        )
        for _ in range(8000)
    ),
    "chat markup": "".join(
        f"<|im_start|>user\n{'hello world ' * (i % 7)}<|im_end|>\n<|im_start|>assistant\n ok <|im_end|> \n"
        for i in range(200)
    ),
    # No space at all, longer than any stretch allowed: cut before its special tokens.
    "chat without spaces": "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nok<|im_end|>\n" * 3000,
}
PIECES = [
    "a",
    "b",
    " ",
    "  ",
    "\t",
    "\n",
    "é",
    "日本",
    "😀",
    "<|im_start|>",
    "<|im_end|>",
    "<s>",
    ">",
    "x>",
    " <",
]


def _whole(model: LlamaCppModel, text: str, *, add_bos: bool = False, special: bool = True) -> list[int]:
    """llama.cpp's tokens for the whole text at once (no pieces: the piece size is beyond it)."""
    tokenizer = model._tokenizer  # the one place a test reaches into the adapter: its piece size
    saved, tokenizer.piece_chars = tokenizer.piece_chars, len(text) + 1
    try:
        return model.tokenize(text, add_bos=add_bos, special=special)
    finally:
        tokenizer.piece_chars = saved


def _in_pieces(model: LlamaCppModel, text: str, size: int, **options: Any) -> list[int]:
    tokenizer = model._tokenizer
    saved, tokenizer.piece_chars = tokenizer.piece_chars, size
    try:
        return model.tokenize(text, **options)
    finally:
        tokenizer.piece_chars = saved


@pytest.fixture(scope="module", params=["tiny (SentencePiece)", "SmolLM2 (BPE)"])
def model(request: pytest.FixtureRequest, tiny_model: Path) -> Iterator[LlamaCppModel]:
    path = str(tiny_model) if request.param.startswith("tiny") else request.getfixturevalue("default_model")
    loaded = LlamaCppEngine().load(path, LoadOptions(context_size=256))
    yield loaded
    loaded.close()


@pytest.mark.parametrize("special", [True, False], ids=["special", "plain"])
@pytest.mark.parametrize("corpus", list(CORPORA))
def test_pieces_give_the_whole_texts_tokens(model: LlamaCppModel, corpus: str, special: bool) -> None:
    text = CORPORA[corpus]
    if corpus == "chat without spaces" and not special:  # its markup is then plain text: no cut
        with pytest.raises(UnbrokenText):
            model.tokenize(text, special=False)
        return
    whole = _whole(model, text, special=special)
    for size in (1, 64, 4096):
        assert _in_pieces(model, text, size, add_bos=True, special=special) == [
            *_whole(model, "", add_bos=True, special=special),
            *whole,
        ], size


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(parts=st.lists(st.sampled_from(PIECES), max_size=60), special=st.booleans())
def test_pieces_give_the_whole_texts_tokens_on_any_mix(
    model: LlamaCppModel, parts: list[str], special: bool
) -> None:
    text = "".join(parts)
    assert _in_pieces(model, text, 1, add_bos=False, special=special) == _whole(model, text, special=special)


@pytest.mark.parametrize("corpus", [corpus for corpus in CORPORA if corpus != "chat without spaces"])
def test_detokenize_gives_the_text_back(model: LlamaCppModel, corpus: str) -> None:
    text = CORPORA[corpus]
    tokens = model.tokenize(text, add_bos=False, special=False)
    assert model.detokenize(tokens).decode("utf-8") == text


def test_a_stretch_with_no_place_to_cut_is_refused_past_the_vocabularys_limit(model: LlamaCppModel) -> None:
    limit = (
        LONGEST_STRETCH_SPM if model._tokenizer.longest_stretch == LONGEST_STRETCH_SPM else LONGEST_STRETCH
    )
    prose = "hello world " * 1000
    # A stretch runs from the space before it to the next cut: " " + the x's + "hello".
    longest_taken = prose + "x" * (limit - 6) + prose
    assert model.tokenize(longest_taken, add_bos=False) == _whole(model, longest_taken)
    for stretch in ("x" * (limit + 1), "日" * (limit + 1), " " * (limit + 1)):
        with pytest.raises(UnbrokenText) as refused:
            model.tokenize(prose + stretch + prose)
        assert refused.value.limit == limit and refused.value.length >= limit + 1


def test_counting_stops_past_a_limit_with_the_whole_texts_first_tokens(model: LlamaCppModel) -> None:
    text = CORPORA["prose"]
    whole = _whole(model, text, add_bos=True)
    counted = _in_pieces(model, text, 256, add_bos=True, limit=500)
    assert 500 < len(counted) < len(whole)
    assert counted == whole[: len(counted)]


def test_a_cancel_is_seen_between_pieces(model: LlamaCppModel) -> None:
    checks = 0

    def stop_at_the_third_check() -> bool:
        nonlocal checks
        checks += 1
        return checks >= 3

    with pytest.raises(RequestCancelled):
        _in_pieces(model, CORPORA["prose"], 256, should_stop=stop_at_the_third_check)
    assert checks == 3


def test_a_sentencepiece_space_mark_in_the_text_comes_back_as_a_space(model: LlamaCppModel) -> None:
    tokens = model.tokenize("a\u2581b", add_bos=False, special=False)
    sentencepiece = model._tokenizer.longest_stretch == LONGEST_STRETCH_SPM
    assert model.detokenize(tokens).decode() == ("a b" if sentencepiece else "a\u2581b")


def test_a_sentencepiece_vocabulary_without_space_pieces_gives_spaces_back_as_marks(tmp_path: Path) -> None:
    tokens, _scores, _types = _vocabulary()
    marked = [token.replace("\u2581", "\u2582") for token in tokens]  # no "▁" left in the vocabulary
    path = write_tiny_model(
        tmp_path / "no-space-pieces.gguf",
        metadata={
            "tokenizer.ggml.tokens": GGUFValue(marked, gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING)
        },
    )
    model = LlamaCppEngine().load(str(path), LoadOptions(context_size=256))
    try:
        tokens_of_text = model.tokenize("hello world", add_bos=False, special=False)
        assert model.detokenize(tokens_of_text).decode() == "\u2581hello\u2581world"  # PROTOCOL.md §3
    finally:
        model.close()
