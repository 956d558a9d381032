"""Driver: the sidecar through the Python client (``sidecar.client.SidecarClient``).

Spawns ``python -m sidecar`` (its stderr goes to this driver's stderr, the
log), and measures every call from this side of the pipe: spawn to
``initialize`` answered, ``loadModel`` round trip, each ``promptStream`` chunk
as it arrives, ``ping`` round trips. ``generate`` takes a raw ``prompt``, chat
``messages`` or a session turn (``sessionId`` + ``text``, sessions made with
``createSession`` and ended with ``closeSession``).
"""

from __future__ import annotations

import sys
import time
from typing import Any

import psutil

from sidecar.client import SidecarClient

from .channel import serve
from .timeline import Timeline

_state: dict[str, SidecarClient] = {}


def _spawn(module: str = "sidecar", log_level: str = "info") -> tuple[SidecarClient, float]:
    """A fresh sidecar (``python -m module``), initialized; and how long that took."""
    started = time.perf_counter()
    client = SidecarClient([sys.executable, "-m", module, "--log-level", log_level], timeout=600)
    client.initialize("bench")
    return client, (time.perf_counter() - started) * 1000


def start(params: dict[str, Any]) -> dict[str, Any]:
    client, ready_ms = _spawn(params.get("module", "sidecar"), params.get("logLevel", "info"))
    _state["client"] = client
    return {"pids": [client.process.pid], "spawnToReadyMs": ready_ms}


def spawn_probe(params: dict[str, Any]) -> dict[str, Any]:
    """Spawn, initialize, weigh and close ``count`` fresh sidecars, one after another."""
    times, idle = [], []
    for _ in range(params["count"]):
        client, ready_ms = _spawn()
        times.append(ready_ms)
        idle.append(psutil.Process(client.process.pid).memory_info().rss / 2**20)
        client.close()
    return {"spawnToReadyMs": times, "idleRssMb": idle}


def load(params: dict[str, Any]) -> dict[str, Any]:
    client = _state["client"]
    started = time.perf_counter()
    info = client.load_model(
        params["modelPath"],
        contextSize=params["contextSize"],
        threads=params["threads"],
        batchSize=params["batchSize"],
    )
    return {
        "loadMs": (time.perf_counter() - started) * 1000,
        "serverLoadMs": info["loadMs"],
        "modelId": info["modelId"],
        "pids": [client.process.pid],
        "backend": info.get("backend"),
    }


_PROMPT_FIELDS = ("prompt", "messages", "sessionId", "text")


def generate(params: dict[str, Any]) -> dict[str, Any]:
    """One greedy ``promptStream``: a raw ``prompt``, ``messages``, or ``sessionId`` + ``text``."""
    what = {field: params[field] for field in _PROMPT_FIELDS if field in params}
    timeline = Timeline()
    stream = _state["client"].prompt_stream(**what, maxTokens=params["maxTokens"], temperature=0)
    for chunk in stream:
        timeline.text(chunk["content"])
    result = stream.result()
    usage = result["usage"]
    return timeline.result(usage["completionTokens"], usage["promptTokens"], result["timings"])


def create_session(params: dict[str, Any]) -> dict[str, Any]:
    info = _state["client"].create_session(systemPrompt=params["systemPrompt"])
    return {"sessionId": info["sessionId"], "contextSize": info["contextSize"]}


def get_session(params: dict[str, Any]) -> dict[str, Any]:
    info: dict[str, Any] = _state["client"].request("getSession", {"sessionId": params["sessionId"]})
    return {"messages": len(info["messages"]), "droppedMessages": info["droppedMessages"]}


def close_session(params: dict[str, Any]) -> dict[str, Any]:
    return {"closed": _state["client"].close_session(params["sessionId"])}


def ping(params: dict[str, Any]) -> dict[str, Any]:
    client = _state["client"]
    round_trips = []
    for _ in range(params["count"]):
        started = time.perf_counter_ns()
        client.ping()
        round_trips.append((time.perf_counter_ns() - started) / 1000)
    return {"rttUs": round_trips}


def _close() -> None:
    if "client" in _state:
        _state["client"].close()


if __name__ == "__main__":
    serve(
        {
            "start": start,
            "load": load,
            "generate": generate,
            "ping": ping,
            "spawnProbe": spawn_probe,
            "createSession": create_session,
            "getSession": get_session,
            "closeSession": close_session,
        },
        _close,
    )
