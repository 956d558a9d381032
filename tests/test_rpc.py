"""The dispatch layer over an in-memory channel, with stand-in handlers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from sidecar.errors import InvalidParams
from sidecar.rpc import MAX_BATCH, MAX_RESPONSE_BYTES, Dispatcher, MethodEntry, Params, Phase, RequestContext
from sidecar.transport import LineTooLong


def _no_check(params: Params) -> Params:
    return params


def _require_text(params: Params) -> Params:
    if not isinstance(params.get("text"), str):
        raise InvalidParams("Invalid params: 'text' must be a string.", {"field": "text"})
    return params


class Harness:
    """A dispatcher whose output lines are collected as parsed JSON."""

    def __init__(self, max_response_bytes: int = MAX_RESPONSE_BYTES) -> None:
        self.sent: list[Any] = []
        self.line_sizes: list[int] = []
        self.release = asyncio.Event()
        self.seen_tokens: list[RequestContext] = []

        async def initialize(_context: RequestContext, _params: Params) -> object:
            await asyncio.sleep(0.01)  # an initialize that takes a moment
            return {"ok": True}

        async def echo(_context: RequestContext, params: Params) -> object:
            return params["text"]

        async def wait(context: RequestContext, _params: Params) -> object:
            self.seen_tokens.append(context)
            await self.release.wait()
            return "cancelled" if context.cancel_token.cancelled else "done"

        async def crash(_context: RequestContext, _params: Params) -> object:
            raise RuntimeError("secret internal detail")

        async def beyond_64_bits(_context: RequestContext, _params: Params) -> object:
            return 2**70

        def entry(
            handler: Callable[[RequestContext, Params], Awaitable[object]], check=_no_check
        ) -> MethodEntry:  # type: ignore[no-untyped-def]
            return MethodEntry(check, handler)

        self.dispatcher = Dispatcher(
            {
                "initialize": entry(initialize),
                "echo": entry(echo, _require_text),
                "wait": MethodEntry(_no_check, wait, cancellable=True),
                "crash": entry(crash),
                "huge": entry(beyond_64_bits),
                "hold": entry(wait),  # same handler, but not declared cancellable
                "note": MethodEntry(_no_check, echo, accepts_notification=True),
                "now": MethodEntry(_require_text, echo, immediate=True),
            },
            self._record,
            max_response_bytes=max_response_bytes,
        )

    def _record(self, line: bytes) -> None:
        self.line_sizes.append(len(line))
        self.sent.append(orjson.loads(line))

    def feed(self, *messages: object) -> None:
        for message in messages:
            raw = message if isinstance(message, bytes) else orjson.dumps(message)
            self.dispatcher.handle_frame(raw)

    async def settle(self) -> list[Any]:
        await self.dispatcher.drain(2.0)
        sent, self.sent = self.sent, []
        return sent


def run(test: Callable[[Harness], Awaitable[None]], **harness: Any) -> None:
    async def main() -> None:
        await test(Harness(**harness))

    asyncio.run(main())


def request(request_id: object, method: str, params: object = None) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        message["params"] = params
    return message


async def initialized(h: Harness) -> None:
    h.feed(request(0, "initialize"))
    assert (await h.settle())[0]["result"] == {"ok": True}


def test_requests_right_behind_initialize_wait_for_it() -> None:
    async def scenario(h: Harness) -> None:
        h.feed(
            request(1, "echo", {"text": "early"}),
            request(2, "initialize"),
            request(3, "echo", {"text": "hi"}),
        )
        by_id = {message["id"]: message for message in await h.settle()}
        assert by_id[1]["error"]["code"] == -32002
        assert by_id[3]["result"] == "hi"

    run(scenario)


def test_parse_errors_and_invalid_requests() -> None:
    async def scenario(h: Harness) -> None:
        await initialized(h)
        h.feed(
            b"{oops",
            b"\xff\xfe",
            b"[]",
            b"42",
            {"jsonrpc": "2.0", "id": 5},
            {"jsonrpc": "2.0", "id": False, "method": "echo"},
        )
        codes = [(message["error"]["code"], message["id"]) for message in await h.settle()]
        assert codes == [
            (-32700, None),
            (-32700, None),
            (-32600, None),
            (-32600, None),
            (-32600, 5),
            (-32600, None),
        ]

    run(scenario)


def test_params_errors_name_the_field_and_positional_params_are_refused() -> None:
    async def scenario(h: Harness) -> None:
        await initialized(h)
        h.feed(request(1, "echo", {"text": 3}), request(2, "echo", ["x"]))
        first, second = await h.settle()
        assert first["error"] == {
            "code": -32602,
            "message": "Invalid params: 'text' must be a string.",
            "data": {"field": "text"},
        }
        assert second["error"]["code"] == -32602

    run(scenario)


def test_batches_answer_in_one_array_and_skip_notifications() -> None:
    async def scenario(h: Harness) -> None:
        await initialized(h)
        h.feed(
            [
                request(1, "echo", {"text": "a"}),
                {"jsonrpc": "2.0", "method": "echo", "params": {"text": "n"}},
                7,
            ]
        )
        h.feed([{"jsonrpc": "2.0", "method": "note", "params": {"text": "n"}}])
        (batch,) = await h.settle()
        assert [item.get("result", item.get("error", {}).get("code")) for item in batch] == [-32600, "a"]

    run(scenario)


def test_a_batch_over_the_member_limit_is_one_invalid_request() -> None:
    async def scenario(h: Harness) -> None:
        await initialized(h)
        h.feed([request(n, "echo", {"text": "a"}) for n in range(MAX_BATCH)])
        (batch,) = await h.settle()
        assert len(batch) == MAX_BATCH
        h.feed([7] * (MAX_BATCH + 1))
        (refused,) = await h.settle()
        assert refused["error"]["code"] == -32600 and refused["id"] is None

    run(scenario)


def test_a_param_named_context_is_a_param_like_any_other() -> None:
    async def scenario(h: Harness) -> None:
        await initialized(h)
        h.feed(request(1, "echo", {"text": "x", "context": 5}))
        assert (await h.settle())[0]["result"] == "x"

    run(scenario)


def test_unexpected_exceptions_become_a_generic_internal_error() -> None:
    async def scenario(h: Harness) -> None:
        await initialized(h)
        h.feed(request(1, "crash"))
        (response,) = await h.settle()
        assert response["error"]["code"] == -32603
        assert "secret" not in orjson.dumps(response).decode()

    run(scenario)


def test_a_result_that_cannot_be_sent_is_answered_with_an_error_in_its_place() -> None:
    async def scenario(h: Harness) -> None:
        await initialized(h)
        h.feed(
            request(1, "echo", {"text": "x" * 500}), request(2, "echo", {"text": "short"}), request(3, "huge")
        )
        answers = {response["id"]: response for response in await h.settle()}
        assert answers[1]["error"]["code"] == -32010  # longer than a host may read
        assert answers[1]["error"]["data"] == {"size": 536, "maxLineBytes": 200}  # the whole response line
        assert answers[2]["result"] == "short"
        assert answers[3]["error"]["code"] == -32603  # an integer JSON cannot carry

    run(scenario, max_response_bytes=200)


def test_a_batch_whose_line_would_be_too_long_answers_its_longest_member_with_an_error() -> None:
    async def scenario(h: Harness) -> None:
        await initialized(h)
        h.line_sizes.clear()
        # Each answer fits alone (about 1 KB); together they would not.
        h.feed([request(1, "echo", {"text": "x" * 1000}), request(2, "echo", {"text": "y" * 900}), 7])
        (batch,) = await h.settle()
        assert h.line_sizes[-1] <= 1500
        answers = {item["id"]: item for item in batch}
        assert answers[1]["error"]["code"] == -32010 and answers[1]["error"]["data"]["maxLineBytes"] == 1500
        assert answers[2]["result"] == "y" * 900
        assert answers[None]["error"]["code"] == -32600

    run(scenario, max_response_bytes=1500)


def test_cancel_sets_the_token_and_duplicate_ids_are_refused() -> None:
    async def scenario(h: Harness) -> None:
        await initialized(h)
        h.feed(request(1, "wait"), request(1, "echo", {"text": "dup"}))
        await asyncio.sleep(0)
        assert h.dispatcher.cancel(1) is True
        assert h.dispatcher.cancel(1) is False  # already cancelled
        assert h.dispatcher.cancel("unknown") is False
        h.release.set()
        responses = await h.settle()
        assert responses[0]["error"]["code"] == -32009
        assert responses[1] == {"jsonrpc": "2.0", "result": "cancelled", "id": 1}
        assert h.dispatcher.cancel(1) is False  # finished

    run(scenario)


def test_unknown_methods_and_ignored_notifications() -> None:
    async def scenario(h: Harness) -> None:
        await initialized(h)
        h.feed({"jsonrpc": "2.0", "method": "wait"}, {"jsonrpc": "2.0", "method": "nope"}, request(2, "nope"))
        responses = await h.settle()
        assert [r["error"]["code"] for r in responses] == [-32601]
        assert h.seen_tokens == []  # "wait" does not accept notifications: never ran

    run(scenario)


def test_shutting_down_refuses_new_requests() -> None:
    async def scenario(h: Harness) -> None:
        await initialized(h)
        h.dispatcher.stop()
        h.feed(
            {"jsonrpc": "2.0", "method": "note", "params": {"text": "late"}},
            request(1, "echo", {"text": "late"}),
        )
        responses = await h.settle()
        # The notification, refused like the request, still gets no reply.
        assert [(r["id"], r["error"]["code"]) for r in responses] == [(1, -32007)]

    run(scenario)


def test_an_unknown_method_while_stopping_is_still_method_not_found() -> None:
    async def scenario(h: Harness) -> None:
        await initialized(h)
        h.dispatcher.stop()
        h.feed(request(1, "nope"))
        assert (await h.settle())[0]["error"]["code"] == -32601

    run(scenario)


def test_over_long_line_marker_is_answered_with_id_null() -> None:
    async def scenario(h: Harness) -> None:
        h.dispatcher.handle_frame(LineTooLong(99, 10))
        (response,) = await h.settle()
        assert response["error"]["code"] == -32010
        assert response["error"]["data"] == {"size": 99, "maxLineBytes": 10}
        assert response["id"] is None

    run(scenario)


def test_cancel_of_a_method_that_cannot_be_cancelled_says_false() -> None:
    async def scenario(h: Harness) -> None:
        await initialized(h)
        h.feed(request(1, "hold"))
        await asyncio.sleep(0)
        assert h.dispatcher.cancel(1) is False
        h.release.set()
        assert (await h.settle())[0]["result"] == "done"

    run(scenario)


def test_an_immediate_method_is_answered_before_handle_frame_returns() -> None:
    async def scenario(h: Harness) -> None:
        await initialized(h)
        h.feed(request(1, "now", {"text": "at once"}))
        assert h.sent == [{"jsonrpc": "2.0", "result": "at once", "id": 1}]  # no task, no await
        h.feed(request(2, "now", {}), request(3, "now", {"text": "again"}))
        assert [message["id"] for message in h.sent[1:]] == [2, 3]
        assert h.sent[1]["error"]["code"] == -32602  # errors take the same path
        h.feed(request(4, "wait"), request(5, "now", {"text": "beside a waiting request"}))
        assert h.sent[-1]["id"] == 5
        h.release.set()
        assert [message["id"] for message in await h.settle()][-1] == 4

    run(scenario)


def test_an_immediate_method_before_initialize_waits_like_any_other() -> None:
    async def scenario(h: Harness) -> None:
        h.feed(request(0, "initialize"), request(1, "now", {"text": "behind initialize"}))
        assert h.sent == []  # it waits for initialize, on a task
        assert [message["id"] for message in await h.settle()] == [0, 1]

    run(scenario)


def test_the_lifecycle_moves_new_initializing_ready_stopping() -> None:
    async def scenario(h: Harness) -> None:
        assert h.dispatcher.phase is Phase.NEW
        h.feed(request(1, "initialize"))
        assert h.dispatcher.phase is Phase.INITIALIZING
        await h.settle()
        assert h.dispatcher.phase is Phase.READY
        h.feed(request(2, "initialize"))  # again: it answers the same, and the sidecar stays ready
        assert (await h.settle())[0]["result"] == {"ok": True}
        assert h.dispatcher.phase is Phase.READY
        h.dispatcher.stop()
        assert h.dispatcher.phase is Phase.STOPPING
        h.feed(request(3, "initialize"))
        assert (await h.settle())[0]["error"]["code"] == -32007

    run(scenario)


def test_a_failed_initialize_goes_back_to_new_and_refuses_what_waited_for_it() -> None:
    async def scenario(h: Harness) -> None:
        h.feed(request(1, "initialize", ["by position"]), request(2, "echo", {"text": "behind"}))
        assert h.dispatcher.phase is Phase.INITIALIZING
        answers = {message["id"]: message for message in await h.settle()}
        assert answers[1]["error"]["code"] == -32602 and answers[2]["error"]["code"] == -32002
        assert h.dispatcher.phase is Phase.NEW
        h.feed(request(3, "echo", {"text": "still not"}))
        assert (await h.settle())[0]["error"]["code"] == -32002

    run(scenario)


def test_a_notification_or_a_duplicate_initialize_takes_nothing_in() -> None:
    async def scenario(h: Harness) -> None:
        h.feed({"jsonrpc": "2.0", "method": "initialize"})  # ignored: nothing waits for it
        assert h.dispatcher.phase is Phase.NEW
        h.feed(request(1, "hold"))
        assert (await h.settle())[0]["error"]["code"] == -32002

    run(scenario)


def test_the_stop_cuts_short_what_does_not_answer_and_keeps_batches_whole() -> None:
    async def scenario(h: Harness) -> None:
        await initialized(h)
        h.feed(request(1, "hold"), [request(2, "hold"), request(3, "echo", {"text": "done"})])
        await asyncio.sleep(0)
        h.dispatcher.stop()  # "hold" is not cancellable: it goes on waiting
        await h.dispatcher.drain(0.05)
        assert h.sent == []
        await h.dispatcher.cut_short(1.0)
        single, batch = h.sent
        assert single["id"] == 1 and single["error"]["code"] == -32800
        assert [(item["id"], item.get("result", item.get("error", {}).get("code"))) for item in batch] == [
            (2, -32800),
            (3, "done"),
        ]

    run(scenario)
