"""Cutting a long text into pieces that tokenize, one after the other, as the whole text does.

llama.cpp tokenizes a text in one native call that cannot be interrupted, so a
long text is tokenized piece by piece, with a cancel check (and a token count)
between pieces. A cut is made only where no tokenizer llama.cpp has would join
the characters on either side into one token:

- before a space (U+0020) that follows a character that is not whitespace:
  every BPE pre-tokenizer in llama.cpp splits there (no pre-token holds a
  non-space character followed by a space), and a SentencePiece vocabulary
  has no token across it unless a token holds that character followed by
  "▁" (the caller excludes such characters, and others: see below);
- before the text of a special token: llama.cpp reads special tokens first and
  tokenizes the text between them apart, so a chat transcript without a space
  can still be cut (the caller names the tokens for which this holds).

The caller knows the vocabulary and says which characters a space cut may not
follow (inside or at the end of a special token, which would split it or take
whitespace from one that strips it) or precede. Pure string handling. Measured
identity with whole-text tokenization on both kinds of vocabulary:
``tests/test_tokenizer_pieces.py``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

__all__ = ["Cutter"]


class Cutter:
    """Finds the cuts of one vocabulary (and one choice of special-token parsing)."""

    __slots__ = ("_cut",)

    def __init__(
        self,
        never_after: Iterable[str] = (),
        never_before: Iterable[str] = (),
        cut_before: Iterable[str] = (),
    ) -> None:
        """Space cuts never after a character of ``never_after``, nor before a space and one of
        ``never_before``; also a cut before each occurrence of a text in ``cut_before``."""
        after, before = _char_class(never_after), _char_class(never_before)
        # The space is the cut; the character before it must be neither whitespace nor excluded.
        space = rf"(?<=[^\s{after}]) " + (rf"(?![{before}])" if before else "")
        texts = sorted({text for text in cut_before if text}, key=len, reverse=True)
        if texts:
            firsts = _char_class(text[0] for text in texts)
            alternatives = "|".join(re.escape(text) for text in texts)
            # The class in front lets a position that cannot start a text fail at once.
            self._cut = re.compile(rf"(?P<space>{space})|(?=[{firsts}])(?:{alternatives})")
        else:
            self._cut = re.compile(rf"(?P<space>{space})")

    def pieces(self, text: str, size: int) -> Iterator[tuple[str, bool]]:
        """``text`` in consecutive pieces, each ending at the first cut at or after ``size`` characters.

        Yields each piece and whether it starts at a space cut (with the space).
        A piece is longer where no cut is allowed. Joined, the pieces are
        ``text``; no piece after the first is only whitespace.
        """
        start, end = 0, len(text)
        last_space_cut = len(text.rstrip())  # a space cut there or later leaves only whitespace
        after_space = False
        while end - start > size:
            found = self._cut.search(text, start + size)
            if found is None:
                break
            at_space = found.lastgroup == "space"
            if at_space and found.start() >= last_space_cut:
                break
            yield text[start : found.start()], after_space
            start, after_space = found.start(), at_space
        yield text[start:], after_space

    def longest_without_cut(self, text: str) -> int:
        """The length of the longest part of ``text`` with no cut inside (all of it, if none)."""
        longest, start = 0, 0
        for found in self._cut.finditer(text):
            longest = max(longest, found.start() - start)
            start = found.start()
        return max(longest, len(text) - start)


def _char_class(chars: Iterable[str]) -> str:
    return "".join(sorted({re.escape(char) for char in chars if len(char) == 1}))
