"""The prompt set, rendered once so that every system sees identical tokens.

Chat prompts are rendered with the model's own Jinja chat template exactly as
the sidecar renders ``messages`` (``Jinja2ChatFormatter``, generation prompt
appended), then sent to every system as the same raw completion text. The
set: a raw-text probe (also the first prompt after each load, for the
cold-start figure); the probe three times more with the prompt cache holding
it (only its last token is evaluated: the TTFT that is left is one decode
step plus each system's overhead); three short chat prompts that ask for long
answers; and one long chat prompt of about 1,500 tokens (prompt processing).
"""

from __future__ import annotations

import ctypes
import itertools
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Prompt", "build_prompts"]

Kind = Literal["probe", "cached", "short", "long"]
CACHED_REPEATS = 3
CACHED_MAX_TOKENS = 4

PROBE = "The history of the printing press began in"
SHORT = (
    "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle.",
    "Explain step by step, in detail, how a bill becomes a law in the United States.",
    "List twenty ideas for a weekend trip and describe each one in two sentences.",
)
_TEAMS = ("storage", "billing", "search", "mobile", "payments", "identity", "analytics", "support")
_EVENTS = (
    "shipped the migration to the new cluster two days ahead of plan",
    "found that the nightly export doubled in size after the schema change",
    "reduced the error rate of the checkout flow from 1.2% to 0.4%",
    "postponed the dashboard redesign until the accessibility review is done",
    "hired a contractor to finish the documentation of the public API",
    "measured that cold starts of the worker take 900 ms on the smallest instance",
)


def _drop_log_line(_level: int, _text: bytes, _data: int | None) -> None:
    """llama.cpp's log lines are noise while counting tokens."""


_SILENT = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)(_drop_log_line)


@dataclass(frozen=True, slots=True)
class Prompt:
    name: str
    kind: Kind
    text: str
    tokens: int
    max_tokens: int | None = None  # None: the run's maxTokens


def build_prompts(model_path: str, long_tokens: int) -> list[Prompt]:
    """Render and count the prompt set with the model's own template and tokenizer."""
    import llama_cpp

    llama_cpp.llama_log_set(
        _SILENT, ctypes.c_void_p(0)
    )  # its warnings about a vocab-only context are noise here
    llm = llama_cpp.Llama(model_path=model_path, vocab_only=True, verbose=False)
    try:
        render = _renderer(llm)
        probe = _raw(llm, "probe", "probe", PROBE)
        prompts = [probe]
        prompts += [
            Prompt(f"cached-{i + 1}", "cached", probe.text, probe.tokens, CACHED_MAX_TOKENS)
            for i in range(CACHED_REPEATS)
        ]
        prompts += [render(f"short-{i + 1}", "short", text) for i, text in enumerate(SHORT)]
        prompts.append(_long_prompt(render, long_tokens))
    finally:
        llm.close()
    return prompts


def _count(llm: Any, text: str) -> int:
    """Tokens of ``text`` as the sidecar's raw ``prompt`` path counts them."""
    return len(llm.tokenize(text.encode("utf-8"), add_bos=True, special=True))


def _raw(llm: Any, name: str, kind: Kind, text: str) -> Prompt:
    return Prompt(name, kind, text, _count(llm, text))


def _renderer(llm: Any) -> Any:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    def token_text(token: int) -> str:
        return str(llm._model.token_get_text(token)) if token >= 0 else ""

    formatter = Jinja2ChatFormatter(
        template=llm.metadata["tokenizer.chat_template"],
        eos_token=token_text(llm.token_eos()),
        bos_token=token_text(llm.token_bos()),
        stop_token_ids=[llm.token_eos()],
    )

    def render(name: str, kind: Kind, content: str) -> Prompt:
        rendered = formatter(messages=[{"role": "user", "content": content}])
        as_chat = llm.tokenize(
            rendered.prompt.encode("utf-8"), add_bos=not rendered.added_special, special=True
        )
        prompt = _raw(llm, name, kind, rendered.prompt)
        if prompt.tokens != len(as_chat):
            raise SystemExit(
                f"{name}: the raw prompt would not tokenize like the chat request; cannot compare"
            )
        return prompt

    return render


def _long_prompt(render: Any, target_tokens: int) -> Prompt:
    """Meeting notes to summarize, grown a paragraph at a time until about ``target_tokens``."""
    paragraphs: list[str] = []
    prompt: Prompt | None = None
    for week, (team, event) in enumerate(itertools.product(_TEAMS, _EVENTS), start=1):
        paragraphs.append(f"Week {week}: the {team} team {event}. Owner: engineer #{week * 7 % 50 + 1}.")
        text = "Summarize these status notes in five bullet points.\n\n" + "\n".join(paragraphs)
        prompt = render("long", "long", text)
        if prompt.tokens >= target_tokens:
            return prompt
    raise SystemExit(f"could not build a {target_tokens}-token prompt (got {prompt and prompt.tokens})")
