"""The engine's checks on grammars before llama.cpp parses them, and its stderr capture."""

from __future__ import annotations

import os
import threading

from sidecar.engine.grammar import grammar_nesting, outside_refs, rule_chain, stderr_captured


def test_nesting_and_chains_ignore_brackets_and_names_in_literals_classes_and_comments() -> None:
    assert grammar_nesting('root ::= (("((" [(]) # (((\n)') == 2
    assert rule_chain('root ::= a "b c d"\na ::= b [c-d] # c\nb ::= "x"\nc ::= d\nd ::= "y"') == 3
    assert rule_chain('root ::= root "a" | "b"') == 1  # a rule that comes back counts once


def test_a_chain_longer_than_any_stack_is_measured_without_recursion() -> None:
    chained = "\n".join(f"r{i} ::= r{i + 1}" for i in range(70_000)) + '\nr70000 ::= "x"'
    assert rule_chain("root ::= r0\n" + chained) == 70_002


def test_outside_refs_walks_a_schema_deeper_than_python_recursion() -> None:
    schema: dict[str, object] = {}
    node = schema
    for _ in range(5_000):
        child: dict[str, object] = {}
        node["properties"] = {"a": child}
        node = child
    node["$ref"] = "https://example.invalid/s.json"
    assert outside_refs(schema) == ["https://example.invalid/s.json"]
    assert outside_refs({"$defs": {"a": {}}, "$ref": "#/$defs/a"}) == []


def test_captures_on_several_threads_leave_fd_2_as_it_was() -> None:
    original = os.fstat(2)
    errors: list[BaseException] = []

    def capture_often() -> None:
        try:
            for _ in range(200):
                with stderr_captured() as printed:
                    os.write(2, b"")
                assert printed == []
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=capture_often) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads), "a capture hung"
    assert not errors
    now = os.fstat(2)
    assert (now.st_dev, now.st_ino) == (original.st_dev, original.st_ino)
