"""The driver side of the orchestrator's line protocol, for Python drivers.

A driver reads one JSON command per line on stdin (``{"op": NAME, ...}``) and
answers each with one JSON line on stdout: ``{"ok": true, ...result}`` or
``{"ok": false, "error": "..."}``. ``exit`` ends it. Everything else the
process prints (llama.cpp's logs, the sidecar's stderr) goes to stderr, which
the orchestrator keeps in a log file.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["Handler", "serve"]

Handler = Callable[[dict[str, Any]], dict[str, Any]]


def serve(handlers: Mapping[str, Handler], on_exit: Callable[[], None]) -> None:
    """Answer commands until ``exit`` or end of input, then call ``on_exit``."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # native code that prints to fd 1 lands in the log, not in the protocol
    sys.stdout = sys.stderr
    for line in sys.stdin:
        command = json.loads(line)
        op = command.pop("op")
        if op == "exit":
            break
        try:
            reply = {"ok": True, **handlers[op](command)}
        except Exception as exc:
            traceback.print_exc()
            reply = {"ok": False, "error": f"{op}: {type(exc).__name__}: {exc}"}
        protocol.write(json.dumps(reply) + "\n")
    on_exit()
    protocol.write(json.dumps({"ok": True}) + "\n")
