"""Token bytes to text: whole UTF-8 characters, no stop strings."""

from __future__ import annotations

from sidecar.engine.text import TextAssembler


def feed(assembler: TextAssembler, pieces: list[bytes]) -> list[str]:
    out = [assembler.push(piece) for piece in pieces]
    return [*out, assembler.finish()]


def test_character_split_across_tokens_is_emitted_whole() -> None:
    euro = "€".encode()
    assert feed(TextAssembler(()), [b"a", euro[:1], euro[1:2], euro[2:] + b"b"]) == ["a", "", "", "€b", ""]


def test_invalid_and_incomplete_bytes_are_dropped_not_replaced() -> None:
    emitted = feed(TextAssembler(()), [b"\xff", b"ok", b"\xe2\x82", b"x", b"\xf0\x9f"])
    assert "".join(emitted) == "okx"
    assert all("\ufffd" not in text for text in emitted)


def test_stop_string_inside_one_piece() -> None:
    assembler = TextAssembler(["STOP"])
    assert assembler.push(b"hello STOP world") == "hello "
    assert assembler.stopped
    assert assembler.finish() == ""


def test_stop_string_across_pieces_is_held_then_cut() -> None:
    assembler = TextAssembler(["</end>"])
    assert assembler.push(b"text </") == "text "
    assert assembler.push(b"en") == ""
    assert assembler.push(b"d> more") == ""
    assert assembler.stopped


def test_held_prefix_is_released_when_it_turns_out_not_to_be_a_stop() -> None:
    assembler = TextAssembler(["</end>"])
    assert assembler.push(b"a </e") == "a "
    assert assembler.push(b"x") == "</ex"
    assert assembler.push(b"</") == ""
    assert assembler.finish() == "</"
    assert not assembler.stopped


def test_earliest_of_several_stops_wins() -> None:
    assembler = TextAssembler(["world", "lo w"])
    assert assembler.push(b"hello world") == "hel"
