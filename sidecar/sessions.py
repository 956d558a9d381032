"""Chat sessions: a history per session, and the prompt of its next turn.

A session is a record the service keeps: its model, system prompt, context
budget, history and, while another prompt uses the model, a snapshot of its
evaluated context. This module builds a turn's prompt from the history with
the model's chat template, dropping the oldest turns when the context would
overflow. It knows nothing of the wire, of queues or of threads: the service
calls it on the model's worker thread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .engine.api import ChatMessage, ContextSnapshot, EngineModel, RenderedChat, StopCheck
from .errors import ContextOverflow, InvalidParams

__all__ = ["Session", "TurnPrompt", "reply_reserve", "turn_prompt"]


@dataclass(slots=True, eq=False)
class Session:
    """One conversation on one model (by id: it outlives an unload of that model)."""

    session_id: str
    model_id: str
    system_prompt: str | None
    context_size: int  # tokens the prompt and the reply may take together
    messages: tuple[ChatMessage, ...] = ()  # user and assistant turns, oldest first
    dropped_messages: int = 0  # dropped to fit the context since the history was last set
    # The session's evaluated context, saved while another prompt uses the model.
    snapshot: ContextSnapshot | None = None
    # The last turn's rendered prompt and reply, and the very tokens the model read and
    # wrote for them: the next turn's prompt starts with this text, and reusing these
    # tokens keeps its start identical to the context even where the reply's text would
    # tokenize differently from how it was generated.
    prefix_text: str = ""
    prefix_tokens: tuple[int, ...] = ()
    last_used: float = 0.0  # time.monotonic(); the least recently used snapshots go first
    closed: bool = False


@dataclass(slots=True, frozen=True)
class TurnPrompt:
    """The tokens of a turn's prompt and the history they were built from."""

    text: str  # the rendered prompt
    tokens: list[int]
    stops: tuple[str, ...]  # the chat template's own stop strings
    history: tuple[ChatMessage, ...]  # the session's history after any drop
    dropped: int  # messages dropped from the front of the history


def reply_reserve(context_size: int, max_tokens: int | None) -> int:
    """Tokens a turn keeps free for its reply: ``maxTokens``, else a quarter of the context.

    Never more than half the context, so a large ``maxTokens`` cannot push the
    whole history out.
    """
    wanted = max_tokens if max_tokens is not None else context_size // 4
    return min(wanted, context_size // 2)


def turn_prompt(
    model: EngineModel, session: Session, text: str, reserve: int, should_stop: StopCheck = lambda: False
) -> TurnPrompt:
    """The prompt for the user's ``text`` after the session's history.

    When it would leave fewer than ``reserve`` tokens of the session's context,
    the oldest turns (after the system prompt) are dropped until the prompt takes
    at most half the context: each drop changes the prompt's start, so the whole
    prompt is evaluated again once, and dropping more than needed lets several
    turns follow before the next drop. A prompt is tokenized only as far as the
    context (a longer one does not fit, however long it is), and ``should_stop``
    interrupts tokenizing (``RequestCancelled``).
    """
    turn = ChatMessage("user", text)
    limit = session.context_size - reserve
    starts = _turn_starts(session.messages)
    prompts: dict[int, tuple[tuple[ChatMessage, ...], RenderedChat, list[int]]] = {}

    def size(kept: int) -> int:
        """Tokens of the prompt with the newest ``kept`` turns (each prompt is built once)."""
        if kept not in prompts:
            history = session.messages[starts[len(starts) - 1 - kept] :]
            rendered = _render(model, _conversation(session, history, turn))
            prompts[kept] = (history, rendered, _tokens(model, session, rendered, should_stop))
        return len(prompts[kept][2])

    kept = _turns_to_keep(len(starts) - 1, size, limit, min(limit, session.context_size // 2))
    if size(kept) > limit:
        raise ContextOverflow(
            f"The message takes {size(kept)} tokens with the system prompt; "
            f"the session's context holds {session.context_size}, {reserve} of them kept for the reply.",
            {"promptTokens": size(kept), "contextSize": session.context_size},
        )
    history, rendered, tokens = prompts[kept]
    return TurnPrompt(rendered.text, tokens, rendered.stops, history, len(session.messages) - len(history))


def _turns_to_keep(turns: int, size: Callable[[int], int], limit: int, target: int) -> int:
    """How many of the newest ``turns`` to keep, given the prompt ``size`` with that many.

    All of them if their prompt takes at most ``limit`` tokens; else the most whose
    prompt takes at most ``target``, or none. Keeping fewer never lengthens the
    prompt, so a search finds the count in O(log n) prompts where dropping one turn
    at a time built one per turn (a history may hold 100,000 messages). It starts
    from the newest turn and doubles: few turns fit in a context, and the prompts
    it builds stay about as short as those (llama.cpp tokenizes a long chat in time
    quadratic in its special tokens; 100,000 messages took minutes).
    """
    kept = 1
    while kept < turns and size(kept) <= limit:
        kept *= 2
    if kept >= turns and size(turns) <= limit:
        return turns
    fitting, too_long = 0, min(kept, turns)  # keeping none is the last resort; the caller checks it
    while too_long - fitting > 1:
        middle = (fitting + too_long) // 2
        if size(middle) <= target:
            fitting = middle
        else:
            too_long = middle
    return fitting


def _render(model: EngineModel, conversation: list[ChatMessage]) -> RenderedChat:
    """The conversation rendered; a refusal names the turn's ``text``, the one param the host sent."""
    try:
        return model.render_chat(conversation)
    except InvalidParams as refused:
        raise InvalidParams(
            refused.message.replace("'messages'", "the session with this 'text'"), {"field": "text"}
        ) from refused


def _tokens(
    model: EngineModel, session: Session, rendered: RenderedChat, should_stop: StopCheck
) -> list[int]:
    """The prompt's tokens: the last turn's own tokens, then the new text's, when it extends that turn.

    Past the session's context the count stops: such a prompt does not fit, whatever its length.
    """
    limit = session.context_size
    if session.prefix_tokens and rendered.text.startswith(session.prefix_text):
        rest = rendered.text[len(session.prefix_text) :]
        room = max(limit - len(session.prefix_tokens), 0)
        new = model.tokenize(rest, add_bos=False, should_stop=should_stop, limit=room)
        return [*session.prefix_tokens, *new]
    return model.tokenize(rendered.text, add_bos=rendered.add_bos, should_stop=should_stop, limit=limit)


def _conversation(session: Session, history: tuple[ChatMessage, ...], turn: ChatMessage) -> list[ChatMessage]:
    system = [ChatMessage("system", session.system_prompt)] if session.system_prompt is not None else []
    return [*system, *history, turn]


def _turn_starts(history: tuple[ChatMessage, ...]) -> list[int]:
    """Where the history starts once its first 0, 1, 2, … turns are dropped (the last: empty).

    A turn runs up to the next user message: a turn and its reply go together,
    and chat templates expect a conversation to open with a user message.
    """
    return [
        *(index for index, message in enumerate(history) if not index or message.role == "user"),
        len(history),
    ]
