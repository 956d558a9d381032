"""Requests that stay in one phase long enough to be caught there, for the cancel and stop tests.

Each one is slow by construction, not by the machine's speed alone: a grammar whose
set-up llama.cpp cannot interrupt, a chat template that loops, a long prompt on the
wide model, a long tokenization.
"""

from __future__ import annotations

from pathlib import Path

from .tiny_model import write_tiny_model

__all__ = ["SLOW_TEMPLATE", "exponential_grammar", "slow_template_model"]


def exponential_grammar(depth: int) -> str:
    """A GBNF grammar whose set-up takes time doubling with ``depth`` (llama.cpp walks every path).

    Measured on the tiny model's vocabulary (AMD EPYC, one core): depth 24 took 184 ms,
    26 took 716 ms, 28 took 3.0 s. Under 600 characters at depth 30.
    """
    rules = "\n".join(f"r{level} ::= r{level + 1} | r{level + 1}" for level in range(depth))
    return f'root ::= r0\n{rules}\nr{depth} ::= "a"'


# Renders for about 10^10 loop steps (ranges are capped at 100,000 in the sandbox): it never ends
# within a test, and no check between steps can stop it.
SLOW_TEMPLATE = (
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    "{% for message in messages %}{{ message['content'] }}{% endfor %}"
)


def slow_template_model(directory: Path) -> Path:
    """The tiny model with a chat template that takes practically forever to render."""
    return write_tiny_model(directory / "slow-template.gguf", chat_template=SLOW_TEMPLATE)
