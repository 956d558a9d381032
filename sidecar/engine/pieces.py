"""Cutting a long text into pieces that tokenize, one after the other, as the whole text does.

llama.cpp tokenizes a text in one native call that cannot be interrupted, so a
long text is tokenized piece by piece, with a cancel check (and a token count)
between pieces. A cut is made only where no tokenizer llama.cpp has would join
the characters on either side into one token:

- before a space (U+0020) that follows a character that is not whitespace:
  every BPE pre-tokenizer in llama.cpp splits there (no pre-token holds a
  non-space character followed by a space), and a SentencePiece vocabulary
  has no token across it unless a token holds that character followed by
  "▁" (such characters are excluded, as the caller says);
- never right after, or inside, the text of a special token the tokenizer
  reads as one token (the caller passes their characters to exclude), so a
  special token stays whole and a whitespace-stripping one keeps its spaces.

Pure string handling: the caller knows the vocabulary and says which
characters a cut may not follow. Measured identity with whole-text
tokenization on both vocabularies: ``tests/test_tokenizer_pieces.py``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

__all__ = ["Cutter"]


class Cutter:
    """Finds the cuts of one vocabulary (and one choice of special-token parsing)."""

    __slots__ = ("_cut",)

    def __init__(self, never_after: Iterable[str] = (), never_before: Iterable[str] = ()) -> None:
        """Cuts never after a character of ``never_after``, nor before a space and one of ``never_before``."""
        after, before = _char_class(never_after), _char_class(never_before)
        # The space is the cut; the character before it must be neither whitespace nor excluded.
        self._cut = re.compile(rf"(?<=[^\s{after}]) " + (rf"(?![{before}])" if before else ""))

    def pieces(self, text: str, size: int) -> Iterator[str]:
        """``text`` in consecutive pieces, each the first allowed cut at or after ``size`` characters.

        A piece is longer where no cut is allowed. Joined, the pieces are ``text``;
        no piece after the first is only whitespace.
        """
        start, end = 0, len(text)
        last_cut = len(text.rstrip())  # a cut there or later would leave only whitespace after it
        while end - start > size:
            found = self._cut.search(text, start + size)
            if found is None or found.start() >= last_cut:
                break
            yield text[start : found.start()]
            start = found.start()
        yield text[start:]

    def longest_without_cut(self, text: str) -> int:
        """The length of the longest part of ``text`` with no cut inside (all of it, if none)."""
        longest, start = 0, 0
        for found in self._cut.finditer(text):
            longest = max(longest, found.start() - start)
            start = found.start()
        return max(longest, len(text) - start)


def _char_class(chars: Iterable[str]) -> str:
    return "".join(sorted({re.escape(char) for char in chars if len(char) == 1}))
