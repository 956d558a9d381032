"""The main job: spawn the sidecar, load the embedded model, stream a reply.

    python -m sidecar.demo ["your prompt"] [--max-tokens N]

Shows the load's progress (a bar on a terminal, a line per quarter when piped),
prints the reply as it is generated, then one line with the token count,
decode speed and time to first token. An error from the sidecar (e.g. the
default model not installed) is printed as its one-sentence message, exit 1.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from typing import Any, TextIO

from .client import RemoteError, SidecarClient, SidecarExited

__all__ = ["main"]

DEFAULT_PROMPT = "Explain in three sentences why the sky is blue."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Stream a reply from the embedded default model.")
    parser.add_argument("prompt", nargs="?", default=DEFAULT_PROMPT)
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--verbose", action="store_true", help="show the sidecar's stderr log")
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except RemoteError as exc:  # the message says what to do (e.g. how to install the model)
        print(f"sidecar.demo: {exc.message}", file=sys.stderr)
        return 1
    except SidecarExited as exc:
        print(f"sidecar.demo: the sidecar exited ({exc}); --verbose shows its log", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    spawned = time.perf_counter()
    with SidecarClient(stderr=None if args.verbose else subprocess.DEVNULL) as client:
        client.initialize("sidecar.demo")
        ready_ms = (time.perf_counter() - spawned) * 1000
        # The engine's default threads: all cores collapse when anything else is busy
        # (1.3 tokens/s on a busy 2-core machine, 35 with one thread).
        model = client.load_model("default", on_progress=_LoadProgress(sys.stdout))
        name = model.get("name", model["modelId"])
        backend = model.get("backend", {}).get("variant") or "built in"
        print(
            f"[{name}: spawn->ready {ready_ms:.0f} ms, load {model['loadMs']:.0f} ms, CPU backend {backend}]"
        )
        print(f"> {args.prompt}\n")
        stream = client.prompt_stream(
            messages=[{"role": "user", "content": args.prompt}],
            maxTokens=args.max_tokens,
            temperature=0.2,
            seed=42,
        )
        for chunk in stream:
            print(chunk["content"], end="", flush=True)
        result = stream.result()
    timings, usage = result["timings"], result["usage"]
    print(
        f"\n\n[{usage['completionTokens']} tokens, {timings['tokensPerSecond']:.1f} tokens/s, "
        f"time to first token {timings['ttftMs']:.0f} ms, finish: {result['finishReason']}]"
    )
    return 0


class _LoadProgress:
    """``loadProgress`` as a bar redrawn in place on a terminal, or a line per quarter when piped."""

    _WIDTH = 30

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._terminal = stream.isatty()
        self._shown = -1  # the last percentage (terminal) or quarter (pipe) written

    def __call__(self, params: dict[str, Any]) -> None:
        fraction = min(max(float(params["progress"]), 0.0), 1.0)
        if self._terminal:
            self._draw(fraction)
        elif int(fraction * 4) > self._shown:
            self._shown = int(fraction * 4)
            print(f"loading: {self._shown * 25}%", file=self._stream, flush=True)

    def _draw(self, fraction: float) -> None:
        percent = int(fraction * 100)
        if percent == self._shown:
            return
        self._shown = percent
        filled = int(fraction * self._WIDTH)
        bar = "#" * filled + "." * (self._WIDTH - filled)
        end = "\n" if percent == 100 else ""
        self._stream.write(f"\rloading [{bar}] {percent:3d}%{end}")
        self._stream.flush()


if __name__ == "__main__":
    sys.exit(main())
