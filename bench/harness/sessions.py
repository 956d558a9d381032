"""Phase 4: chat sessions (protocol 1.1): time to first token turn by turn.

One sidecar (Python client), the default model loaded with the run's threads
and context. Two scripted conversations, A and B, of short user messages
(``session_turns`` of each) under one system prompt, greedy, ``session_max_tokens``
per reply. Three scenarios, every round:

- **single**: conversation A in one session, then B in another: each turn
  evaluates only its new tokens (the end of the last reply, the new message),
  the rest of the prompt is the session's cached prefix;
- **alternating**: A and B in two sessions on the same model, turn by turn
  (A1 B1 A2 B2 ...): every turn takes the model's context from the other
  session, whose KV cache the sidecar saves, and restores its own;
- **stateless**: the same alternating conversation without sessions, each turn a
  one-off ``messages`` prompt with the whole history (the replies of this
  round's single sessions, so the prompts are the same tokens): each switch
  shares only the system prompt with what the context holds, so each turn
  evaluates its whole history again. What the sessions' cache saves.

Before each scenario a raw prompt that shares nothing with the chats takes the
context, so every scenario's first turn evaluates its whole prompt. Each turn
starts ``SETTLE_S`` after the previous one (as every measured call of the
bench). A scenario is one accounted sample: retaken whole (new sessions) when
other processes disturbed it. How many prompt tokens each turn reused is read
from the sidecar's log, where llama-cpp-python prints ``N prefix-match hit,
remaining M prompt tokens to eval`` for every prompt that reused a prefix.

    cd bench && ../.venv/bin/python -m harness.sessions [--quick]   # this phase alone
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from .config import Settings
from .driver import Driver, progress
from .noise import SETTLE_S, NoiseLedger

__all__ = ["CONVERSATIONS", "SCENARIOS", "SYSTEM_PROMPT", "run_sessions"]

SYSTEM_PROMPT = "You are a helpful assistant. Keep your answers short and practical."
CONVERSATIONS: dict[str, tuple[str, ...]] = {
    "A": (
        "Hi! I'm planning a weekend trip to Lisbon. Any tips?",
        "Which neighborhood should I stay in?",
        "How do I get from the airport to the city center?",
        "What local food should I try?",
        "Is it easy to get around by tram?",
        "What should I pack for October weather?",
        "Can you suggest a day trip outside the city?",
        "How much should I budget per day?",
        "Any tips for avoiding crowds at the main sights?",
        "Thanks! Can you sum up the plan in a few lines?",
    ),
    "B": (
        "I want to cook a simple dinner for four tonight. Ideas?",
        "Let's do pasta. Which sauce is quick to make?",
        "I have no fresh tomatoes. What can I use instead?",
        "How long should I boil the pasta?",
        "What side dish goes well with it?",
        "One guest is vegetarian. Is the meal still fine?",
        "What could I make for dessert in under thirty minutes?",
        "Which drink would go well with the meal?",
        "How should I store the leftovers?",
        "Great, can you give me a shopping list?",
    ),
}
SCENARIOS = ("single", "alternating", "stateless")
_LOG_NAME = "sessions"
# Puts the context in a known state before each scenario: a raw prompt that shares
# no prefix with the chats (2 tokens, so the context also holds a generated token).
_RESET_PROMPT = "The history of the printing press began in"
_RESET_TOKENS = 2
_PREFIX_HIT = re.compile(r"Llama\.generate: (\d+) prefix-match hit, remaining (\d+) prompt tokens to eval")


class _Calls:
    """Every prompt the phase sends, in order, so the log's prefix-match lines can be matched to them."""

    def __init__(self, driver: Driver, settings: Settings) -> None:
        self.driver = driver
        self.settings = settings
        self.prompt_tokens: list[int] = []

    def generate(self, **what: Any) -> tuple[int, dict[str, Any]]:
        """One prompt (``sessionId`` + ``text``, ``messages`` or ``prompt``); its call index and result."""
        max_tokens = what.pop("maxTokens", self.settings.session_max_tokens)
        result = self.driver.call("generate", **what, maxTokens=max_tokens)
        self.prompt_tokens.append(int(result["promptTokens"]))
        return len(self.prompt_tokens) - 1, result

    def reset(self) -> None:
        self.generate(prompt=_RESET_PROMPT, maxTokens=_RESET_TOKENS)

    def turn(self, conversation: str, turn: int, **what: Any) -> dict[str, Any]:
        """One measured turn (``turn`` counts from 1), started ``SETTLE_S`` after the previous call."""
        time.sleep(SETTLE_S)
        call, result = self.generate(**what)
        server = result["server"] or {}
        return {
            "conversation": conversation,
            "turn": turn,
            "call": call,
            "ttftMs": result["ttftMs"],
            "serverTtftMs": server.get("ttftMs"),
            "promptMs": server.get("promptMs"),
            "e2eMs": result["e2eMs"],
            "promptTokens": result["promptTokens"],
            "completionTokens": result["completionTokens"],
            "text": result["text"],
        }

    def session(self) -> str:
        return str(self.driver.call("createSession", systemPrompt=SYSTEM_PROMPT)["sessionId"])

    def close(self, session_id: str) -> dict[str, Any]:
        """Close a session; what it held first (messages, and any dropped to fit the context)."""
        held = self.driver.call("getSession", sessionId=session_id)
        self.driver.call("closeSession", sessionId=session_id)
        return held


def run_sessions(settings: Settings, noise: NoiseLedger) -> dict[str, Any]:
    """Raw records: per round, per scenario, one record per turn (see ``_Calls.turn``)."""
    progress("sessions: starting and loading sidecar-py")
    log_path = settings.tmp / "logs" / f"{_LOG_NAME}.log"
    log_start = log_path.stat().st_size if log_path.exists() else 0
    rounds: list[dict[str, Any]] = []
    with Driver("sidecar-py", settings.tmp / "logs", log_name=_LOG_NAME) as driver:
        # llama-cpp-python's prefix-match lines are debug records in the sidecar's log.
        driver.call("start", python=sys.executable, logLevel="debug")
        driver.call(
            "load",
            modelPath=settings.model_path,
            contextSize=settings.context_size,
            threads=settings.threads,
            batchSize=settings.batch_size,
        )
        calls = _Calls(driver, settings)
        _warm_up(calls)
        for round_index in range(settings.session_rounds):
            progress(f"sessions: round {round_index + 1} of {settings.session_rounds}")
            single = _sample(noise, driver, partial(_single, calls, settings.session_turns))
            alternating = _sample(noise, driver, partial(_alternating, calls, settings.session_turns))
            replies = _replies(single["turns"])
            stateless = _sample(noise, driver, partial(_stateless, calls, settings.session_turns, replies))
            rounds.append({"single": single, "alternating": alternating, "stateless": stateless})
    with log_path.open("rb") as log:
        log.seek(log_start)
        _add_evaluated(rounds, calls.prompt_tokens, log.read().decode("utf-8", "replace"))
    for round_index, scenarios in enumerate(rounds):
        if round_index > 0:  # the texts of the first round are kept (the same-replies check)
            for scenario in scenarios.values():
                for turn in scenario["turns"]:
                    turn.pop("text")
    return {
        "systemPrompt": SYSTEM_PROMPT,
        "conversations": {
            name: list(texts[: settings.session_turns]) for name, texts in CONVERSATIONS.items()
        },
        "turns": settings.session_turns,
        "maxTokens": settings.session_max_tokens,
        "rounds": rounds,
    }


def _warm_up(calls: _Calls) -> None:
    """Two turns of a session and a one-off chat prompt, discarded."""
    session = calls.session()
    for text in CONVERSATIONS["A"][:2]:
        calls.generate(sessionId=session, text=text)
    calls.close(session)
    calls.generate(messages=_messages([], CONVERSATIONS["B"][0]))


def _sample(noise: NoiseLedger, driver: Driver, scenario: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """One scenario as one accounted sample (retaken whole, with new sessions, if disturbed)."""
    result, cores = noise.quiet(driver.pid, scenario)
    return {**result, "otherCores": cores}


def _single(calls: _Calls, turns: int) -> dict[str, Any]:
    records, held = [], {}
    for name, texts in CONVERSATIONS.items():
        calls.reset()
        session = calls.session()
        try:
            records += [
                calls.turn(name, index + 1, sessionId=session, text=text)
                for index, text in enumerate(texts[:turns])
            ]
        finally:
            held[name] = calls.close(session)
    return {"turns": records, "sessions": held}


def _alternating(calls: _Calls, turns: int) -> dict[str, Any]:
    calls.reset()
    sessions = {name: calls.session() for name in CONVERSATIONS}
    records = []
    try:
        for index in range(turns):
            for name, texts in CONVERSATIONS.items():
                records.append(calls.turn(name, index + 1, sessionId=sessions[name], text=texts[index]))
    finally:
        held = {name: calls.close(session) for name, session in sessions.items()}
    return {"turns": records, "sessions": held}


def _stateless(calls: _Calls, turns: int, replies: dict[str, list[str]]) -> dict[str, Any]:
    calls.reset()
    records = []
    for index in range(turns):
        for name, texts in CONVERSATIONS.items():
            history = [
                message for pair in zip(texts[:index], replies[name], strict=False) for message in pair
            ]
            records.append(calls.turn(name, index + 1, messages=_messages(history, texts[index])))
    return {"turns": records}


def _messages(history: list[str], text: str) -> list[dict[str, str]]:
    """System prompt, then the history (user, assistant, user, ...), then the new user message."""
    roles = ("user", "assistant")
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        *({"role": roles[index % 2], "content": content} for index, content in enumerate(history)),
        {"role": "user", "content": text},
    ]


def _replies(records: list[dict[str, Any]]) -> dict[str, list[str]]:
    replies: dict[str, list[str]] = {name: [] for name in CONVERSATIONS}
    for record in sorted(records, key=lambda r: (r["conversation"], r["turn"])):
        replies[record["conversation"]].append(record["text"])
    return replies


def _add_evaluated(rounds: list[dict[str, Any]], prompt_tokens: list[int], log: str) -> None:
    """Set each turn's ``reusedTokens`` and ``evaluatedTokens`` from the sidecar's prefix-match lines.

    Prompts run one at a time, and each prompt that reused a prefix printed one
    line whose two numbers add up to its prompt tokens; a prompt without a line
    reused nothing. ``None`` when the log has no such line at all (the line moved).
    """
    hits = [(int(match[1]), int(match[2])) for match in _PREFIX_HIT.finditer(log)]
    reused: list[int | None] = [None] * len(prompt_tokens)
    if hits:
        position = 0
        for call, tokens in enumerate(prompt_tokens):
            if position < len(hits) and sum(hits[position]) == tokens:
                reused[call] = hits[position][0]
                position += 1
            else:
                reused[call] = 0
    for scenarios in rounds:
        for scenario in scenarios.values():
            for turn in scenario["turns"]:
                hit = reused[turn["call"]]
                turn["reusedTokens"] = hit
                turn["evaluatedTokens"] = None if hit is None else turn["promptTokens"] - hit


def _main() -> int:
    """This phase alone: ``python -m harness.sessions [--quick] [--out DIR]``; prints its figures."""
    import argparse
    import json

    from sidecar.model_paths import default_model_path

    from .analysis import session_figures
    from .config import BENCH

    parser = argparse.ArgumentParser(description="the chat-session phase of the benchmark, alone")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "tmp" / "sessions")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--context-size", type=int, default=2048)
    args = parser.parse_args()
    settings = Settings.for_mode(
        quick=args.quick,
        model_path=str(default_model_path()),
        out=args.out,
        threads=args.threads,
        context_size=args.context_size,
    )
    noise = NoiseLedger(attempts=settings.attempts)
    started = time.monotonic()
    raw = run_sessions(settings, noise)
    figures = session_figures(raw)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sessions.json").write_text(json.dumps({"figures": figures, "raw": raw}, indent=1) + "\n")
    print(json.dumps({"figures": figures, "noise": noise.report()}, indent=1))
    print(f"[bench] {time.monotonic() - started:.1f} s; wrote {args.out}/sessions.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
