"""The commands a person runs: ``python -m sidecar.demo`` (``make demo``) and the ``llama-sidecar`` script."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sidecar.client import SidecarClient
from sidecar.model_paths import DEFAULT_MODEL_DISTRIBUTION, INSTALL_HINT

from .harness import ROOT, RawSidecar

PROMPT = "Name a colour."
FINAL_LINE = re.compile(
    r"\[(\d+) tokens, \d+\.\d tokens/s, time to first token \d+ ms, finish: (stop|length)\]"
)

# Imported first by every Python started with this directory on PYTHONPATH: the
# distribution that ships the default model then looks uninstalled to that process.
HIDE_DEFAULT_MODEL = f"""
import importlib.metadata
import re

_from_name = importlib.metadata.Distribution.from_name.__func__


def _hidden(cls, name):
    if re.sub(r"[-_.]+", "-", name).lower() == {DEFAULT_MODEL_DISTRIBUTION!r}:
        raise importlib.metadata.PackageNotFoundError(name)
    return _from_name(cls, name)


importlib.metadata.Distribution.from_name = classmethod(_hidden)
"""


def _demo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar.demo", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )


@pytest.fixture
def without_default_model(tmp_path: Path) -> dict[str, str]:
    """An environment whose Python processes do not see the default model's distribution."""
    (tmp_path / "sitecustomize.py").write_text(HIDE_DEFAULT_MODEL)
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def test_the_demo_streams_a_reply_and_reports_its_speed(default_model: str) -> None:
    done = _demo(PROMPT, "--max-tokens", "8")
    assert done.returncode == 0, done.stderr
    header, reply = done.stdout.split(f"> {PROMPT}\n\n", 1)
    progress, summary = header.rsplit("loading: 100%\n", 1)
    # Piped, the load's progress is a line per quarter reached, in order, ending at 100%.
    quarters = [int(line.removeprefix("loading: ").removesuffix("%")) for line in progress.splitlines()]
    assert quarters == sorted(set(quarters)) and set(quarters) <= {0, 25, 50, 75}, progress
    assert re.fullmatch(r"\[.+: spawn->ready \d+ ms, load \d+ ms, CPU backend \w+\]\n", summary), summary
    text, final = reply.rsplit("\n\n", 1)
    assert text.strip()
    match = FINAL_LINE.fullmatch(final.strip())
    assert match, final
    assert 1 <= int(match[1]) <= 8


def test_on_a_terminal_the_demo_draws_the_load_progress_as_a_bar(default_model: str) -> None:
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "sidecar.demo", PROMPT, "--max-tokens", "2"],
        stdout=terminal,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    os.close(terminal)  # the child holds it; reading ends (EIO) when the child is done
    output, deadline = b"", time.monotonic() + 120
    try:
        while chunk := _read_available(controller, deadline):
            output += chunk
        assert process.wait(timeout=120) == 0
    finally:
        os.close(controller)
        process.kill()
    text = output.decode("utf-8", "replace")
    bars = re.findall(r"\rloading \[([#.]{30})\] +(\d+)%", text)
    assert bars and bars[-1] == ("#" * 30, "100"), text[:400]
    assert [int(percent) for _, percent in bars] == sorted({int(percent) for _, percent in bars})
    assert "loading: " not in text  # no piped-style lines on a terminal


def _read_available(fd: int, deadline: float) -> bytes:
    """What the terminal has, waiting until ``deadline``; b"" once the child is done."""
    readable, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
    assert readable, "the demo wrote nothing to its terminal in time"
    try:
        return os.read(fd, 65536)
    except OSError:  # EIO: the terminal's other end is closed and drained
        return b""


def test_a_missing_default_model_is_refused_with_the_install_hint(
    without_default_model: dict[str, str],
) -> None:
    sidecar = RawSidecar(env=without_default_model)
    try:
        sidecar.initialize()
        error = sidecar.error("loadModel", {"modelPath": "default"})
    finally:
        sidecar.stop()
    assert error["code"] == -32001 and error["data"] == {"modelPath": "default"}
    assert INSTALL_HINT in error["message"]


def test_the_demo_without_the_default_model_says_how_to_install_it(
    without_default_model: dict[str, str],
) -> None:
    done = _demo(PROMPT, env=without_default_model)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("sidecar.demo: ") and INSTALL_HINT in done.stderr.splitlines()[0]


def test_the_demo_says_when_the_sidecar_dies(tmp_path: Path) -> None:
    # Only the sidecar the demo spawns (python -m sidecar) dies, as it starts.
    (tmp_path / "sitecustomize.py").write_text(
        "import os, sys\nif sys.orig_argv[-2:] == ['-m', 'sidecar']:\n    os._exit(3)\n"
    )
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    done = _demo(PROMPT, env={**os.environ, "PYTHONPATH": path})
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("sidecar.demo: the sidecar exited"), done.stderr


def test_the_console_script_shakes_hands_and_shuts_down() -> None:
    script = Path(sys.executable).parent / "llama-sidecar"
    if not script.exists():
        pytest.skip("the package is not installed in this environment (pip install -e .)")
    with SidecarClient([str(script)], stderr=subprocess.DEVNULL) as client:
        assert client.initialize()["serverInfo"]["name"] == "llama-sidecar"
        assert client.ping() == {}
        client.shutdown()
        assert client.process.wait(timeout=5) == 0


@pytest.mark.parametrize("value", ["0", "-5"])
def test_a_line_limit_that_would_refuse_every_line_is_refused_at_start(value: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sidecar", "--max-line-bytes", value],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2 and "not a positive number" in done.stderr, done.stderr


def test_help_prints_the_usage_to_stdout_and_exits_zero_before_serving() -> None:
    # PROTOCOL.md §2: the one time stdout carries anything but protocol messages.
    done = subprocess.run(
        [sys.executable, "-m", "sidecar", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0
    assert done.stdout.startswith("usage: llama-sidecar") and "--max-line-bytes" in done.stdout
    assert done.stderr == ""
