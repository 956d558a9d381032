"""The main job: spawn the sidecar, load the embedded model, stream a reply.

    python -m sidecar.demo ["your prompt"] [--max-tokens N]

Prints the reply as it is generated, then one line with the token count,
decode speed and time to first token. An error from the sidecar (e.g. the
default model not installed) is printed as its one-sentence message, exit 1.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

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
        # The demo runs alone, so every core can go to llama.cpp (the default leaves room for an app).
        model = client.load_model("default", threads=os.cpu_count() or 1)
        name = model.get("name", model["modelId"])
        print(f"[{name}: spawn->ready {ready_ms:.0f} ms, load {model['loadMs']:.0f} ms]")
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


if __name__ == "__main__":
    sys.exit(main())
