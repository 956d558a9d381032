"""Start-up, shutdown and every way the sidecar can be told (or forced) to stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sidecar.settings import PARENT_PID_ENV

from .harness import ROOT, RawSidecar
from .tiny_model import LETTERS_FOREVER

# A chunk a token until the context is full: the random model's own text may show nothing.
LONG_STREAM = {"prompt": "hello", "temperature": 0, "grammar": LETTERS_FOREVER}


def _streaming(sidecar: RawSidecar, tiny_model: Path) -> int:
    """Load the tiny model, start a stream that would run for a while, wait for its first chunk."""
    sidecar.request("loadModel", {"modelPath": str(tiny_model), "contextSize": 2048})
    request_id = sidecar.send_request("promptStream", LONG_STREAM)
    assert sidecar.next_message()["method"] == "streamChunk"
    return request_id


def test_shutdown_answers_null_then_exits_zero(sidecar: RawSidecar, tiny_model: Path) -> None:
    request_id = _streaming(sidecar, tiny_model)
    assert sidecar.request("shutdown") is None
    assert sidecar.wait_exit(2) == 0
    chunks, response = sidecar.collect_stream(request_id, timeout=1)
    assert chunks[-1]["isFinal"] and response["result"]["finishReason"] == "cancelled"


def test_stdin_eof_mid_stream_cancels_answers_and_exits(sidecar: RawSidecar, tiny_model: Path) -> None:
    request_id = _streaming(sidecar, tiny_model)
    started = time.monotonic()
    sidecar.close_stdin()
    assert sidecar.wait_exit(2) == 0
    assert time.monotonic() - started < 2
    _chunks, response = sidecar.collect_stream(request_id, timeout=1)
    assert response["result"]["finishReason"] == "cancelled"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_stream_exits_cleanly(sidecar: RawSidecar, tiny_model: Path, signum: int) -> None:
    request_id = _streaming(sidecar, tiny_model)
    started = time.monotonic()
    sidecar.process.send_signal(signum)
    assert sidecar.wait_exit(2) == 0
    assert time.monotonic() - started < 2
    _chunks, response = sidecar.collect_stream(request_id, timeout=1)
    assert response["result"]["finishReason"] == "cancelled"


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGINT", "stdin EOF"])
def test_stop_during_a_load_exits_cleanly(sidecar: RawSidecar, slow_model: Path, stop: str) -> None:
    # Without mmap the weights are read, not mapped: the load lasts long enough to be stopped.
    request_id = sidecar.send_request("loadModel", {"modelPath": str(slow_model), "useMmap": False})
    first = sidecar.next_message()
    assert first["method"] == "loadProgress" and first["params"]["requestId"] == request_id
    started = time.monotonic()
    if stop == "stdin EOF":
        sidecar.close_stdin()
    else:
        sidecar.process.send_signal(getattr(signal, stop))
    assert sidecar.wait_exit(2) == 0
    assert time.monotonic() - started < 2
    assert sidecar.response(request_id, timeout=1)["error"]["code"] == -32800  # the load was stopped


def test_idle_sigterm_exits_zero(sidecar: RawSidecar) -> None:
    sidecar.process.terminate()
    assert sidecar.wait_exit(2) == 0


def _spawn_through_a_parent(
    stdin_of_sidecar: str, *, tell_pid: bool = False, then: str = "time.sleep(60)"
) -> tuple[subprocess.Popen[bytes], int]:
    """Start a parent process that spawns the sidecar, then does ``then``; return both pids' owners.

    With ``tell_pid`` the parent names itself in the sidecar's environment, as the clients do.
    """
    env = f"{{**os.environ, {PARENT_PID_ENV!r}: str(os.getpid())}}" if tell_pid else "None"
    program = (
        "import os, subprocess, sys, time\n"
        f"child = subprocess.Popen([sys.executable, '-m', 'sidecar'], stdin={stdin_of_sidecar},"
        f" stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={env})\n"
        "print(child.pid, flush=True)\n"
        f"{then}\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", program], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT
    )
    assert parent.stdout is not None
    return parent, int(parent.stdout.readline())


def _gone_within(pid: int, seconds: float) -> bool:
    """True once ``pid`` has exited (a zombie awaiting its new parent's reaping counts)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state == "Z":
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


@pytest.mark.parametrize(
    "stdin_of_sidecar",
    [
        "subprocess.PIPE",  # the usual case: the dead parent's pipe closes, stdin reaches EOF
        "None",  # stdin inherited and kept open by us: only the parent watch can notice
    ],
)
def test_no_orphan_when_the_parent_is_killed(stdin_of_sidecar: str) -> None:
    parent, sidecar_pid = _spawn_through_a_parent(stdin_of_sidecar)
    try:
        _wait_until_idle(sidecar_pid)  # started: it watches the parent it found
        parent.kill()
        parent.wait(5)
        assert _gone_within(sidecar_pid, 3), "the sidecar outlived its parent"
    finally:
        if not _gone_within(sidecar_pid, 0):
            os.kill(sidecar_pid, signal.SIGKILL)
        parent.wait(5)
        for pipe in (parent.stdin, parent.stdout):
            assert pipe is not None
            pipe.close()


def test_no_orphan_when_the_parent_dies_as_the_sidecar_starts() -> None:
    # The parent is gone before the sidecar has run a line: only the pid the parent put in
    # its environment says whom to outlive (os.getppid() already names the new parent).
    parent, sidecar_pid = _spawn_through_a_parent("None", tell_pid=True, then="os._exit(0)")
    try:
        parent.wait(5)
        assert _gone_within(sidecar_pid, 5), "the sidecar outlived its parent"
    finally:
        if not _gone_within(sidecar_pid, 0):
            os.kill(sidecar_pid, signal.SIGKILL)
        for pipe in (parent.stdin, parent.stdout):
            assert pipe is not None
            pipe.close()


# Makes the sidecar's start-up slow at a known point, and says when it is there: importing
# its server takes a second.
_SLOW_START = """
import importlib.abc, sys, time
class _Slow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "sidecar.server":
            print("importing the server", file=sys.stderr, flush=True)
            time.sleep(1.0)
        return None
sys.meta_path.insert(0, _Slow())
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_during_start_up_exits_zero(signum: int, tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(_SLOW_START)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    process = subprocess.Popen(
        # At debug level: what start-up prints to sys.stderr is a debug log line.
        [sys.executable, "-m", "sidecar", "--log-level", "debug"],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=env,
    )
    assert process.stdin is not None and process.stderr is not None
    try:
        assert process.stderr.readline().endswith(b"importing the server\n")
        process.send_signal(signum)  # mid start-up, long before the server serves
        assert process.wait(5) == 0
    finally:
        process.kill()
        process.wait(5)
        process.stdin.close()
        process.stderr.close()


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a live process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def _wait_until_idle(pid: int, timeout: float = 10.0) -> float:
    """Wait until the process stops using CPU (start-up is over); return its CPU seconds so far."""
    deadline = time.monotonic() + timeout
    used = _cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        used, before = _cpu_seconds(pid), used
        if used == before:
            return used
    raise AssertionError("the sidecar kept using CPU before any request")


def _reap(process: subprocess.Popen[bytes], timeout: float) -> tuple[int, float]:
    """Wait at most ``timeout`` s for the process to end: (exit code, CPU seconds it used in all)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return process.returncode, usage.ru_utime + usage.ru_stime
        time.sleep(0.01)
    process.kill()
    process.wait()
    raise AssertionError(f"the sidecar still ran {timeout} s after its stdout closed")


def test_a_closed_stdout_ends_the_process_without_spinning() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "sidecar"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    assert process.stdin is not None and process.stdout is not None
    process.stdout.close()
    cpu_at_start = _wait_until_idle(process.pid)
    process.stdin.write(
        b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"1.0"}}\n'
    )
    process.stdin.flush()
    # The answer finds no reader: the sidecar must notice, stop and exit, not loop on the error.
    status, cpu_in_all = _reap(process, timeout=1.0)
    process.stdin.close()
    assert status == 0
    assert cpu_in_all - cpu_at_start < 0.5, f"{cpu_in_all - cpu_at_start:.2f} s of CPU after the write"


def test_stdout_stays_clean_while_models_load_and_llama_cpp_logs(
    sidecar: RawSidecar, tiny_model: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(tiny_model.read_bytes()[:100_000])  # llama.cpp logs errors loading it
    ids = []
    for round_number in range(20):
        ids.append(
            sidecar.send_request("loadModel", {"modelPath": str(tiny_model), "modelId": f"m{round_number}"})
        )
        ids.append(sidecar.send_request("loadModel", {"modelPath": str(broken)}))
        ids.extend(sidecar.send_request("ping") for _ in range(10))
        ids.append(sidecar.send_request("unloadModel", {"modelId": f"m{round_number}"}))
    for request_id in ids:
        sidecar.response(request_id)
    # Every line was JSON valid against the schemas (the fixture checks bad_lines),
    # and llama.cpp's own output went to the log instead.
    assert any(b"llama" in line for line in sidecar.stderr_lines)


@pytest.mark.parametrize(("level", "shown"), [("warning", False), ("info", False), ("debug", True)])
def test_log_level_governs_llama_cpp_python_s_own_lines_too(
    tiny_model: Path, level: str, shown: bool
) -> None:
    sidecar = RawSidecar("--log-level", level)
    try:
        sidecar.initialize()
        sidecar.request("loadModel", {"modelPath": str(tiny_model)})
        sidecar.request("prompt", {"prompt": "hi", "maxTokens": 2})
    finally:
        sidecar.stop()
    log = b"".join(sidecar.stderr_lines).decode("utf-8", "replace")
    # llama-cpp-python prints these to sys.stderr itself, not through logging: they are
    # debug records (the metadata dump and chat template stay out of an info log).
    assert ("sidecar DEBUG sidecar.stderr: Model metadata:" in log) is shown
    assert ("Model metadata:" in log) is shown, log


def test_an_inherited_stdin_is_left_blocking_as_it_was() -> None:
    # The sidecar reads stdin non-blocking; the flag belongs to the pipe, shared with the host.
    read_end, write_end = os.pipe()
    try:
        process = subprocess.Popen([sys.executable, "-m", "sidecar"], stdin=read_end, cwd=ROOT)
        os.write(write_end, b'{"jsonrpc":"2.0","id":1,"method":"ping"}\n')
        os.close(write_end)  # however soon: the sidecar reads stdin non-blocking until the EOF
        write_end = -1
        assert process.wait(5) == 0
        assert os.get_blocking(read_end)
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
