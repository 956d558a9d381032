"""The frozen sidecar (``make package``): the same protocol from an executable that needs no Python.

Runs against ``dist/llama-sidecar/llama-sidecar`` with an empty environment (``env -i``,
only ``PATH``): every protocol vector, a real-model stream, cancel, the shutdown ladder
(end of input, SIGTERM), the stdout guard, and a stream on an emulated Nehalem CPU.
Skipped when no package was built, except under ``make test`` (which builds it first and
sets ``LLAMA_SIDECAR_REQUIRE_PACKAGE``): there a missing package fails.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import PACKAGED_SIDECAR, RawSidecar
from .test_vectors import VECTOR_FILES, _placeholders
from .tiny_model import LETTERS_FOREVER
from .vectors import VectorRun

EMPTY_ENVIRONMENT = ("env", "-i", "PATH=/usr/bin:/bin")
EMULATED_WAIT = 100.0


@pytest.fixture(scope="module")
def packaged() -> tuple[str, ...]:
    """The command that starts the packaged sidecar with nothing in its environment."""
    if not PACKAGED_SIDECAR.exists():
        message = f"{PACKAGED_SIDECAR} is missing: `make package` builds it"
        if os.environ.get("LLAMA_SIDECAR_REQUIRE_PACKAGE") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return (*EMPTY_ENVIRONMENT, str(PACKAGED_SIDECAR))


@pytest.fixture
def frozen(packaged: tuple[str, ...]) -> Iterator[RawSidecar]:
    sidecar = RawSidecar(command=packaged)
    sidecar.initialize()
    yield sidecar
    sidecar.stop()


@pytest.mark.parametrize("path", VECTOR_FILES, ids=lambda path: path.stem)
def test_vector_on_the_package(
    packaged: tuple[str, ...],
    path: Path,
    tiny_model: Path,
    eos_model: Path,
    plain_model: Path,
    tmp_path: Path,
) -> None:
    VectorRun(path, _placeholders(tiny_model, eos_model, plain_model, tmp_path), command=packaged).run()


def test_the_package_streams_its_embedded_model(frozen: RawSidecar) -> None:
    model = frozen.request("loadModel", {"modelPath": "default"})
    assert Path(model["modelPath"]).is_relative_to(PACKAGED_SIDECAR.parent), model["modelPath"]
    assert model["backend"]["build"] == "portable" and model["backend"]["variant"], model["backend"]
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    chunks, response = frozen.stream({"messages": messages, "maxTokens": 8, "temperature": 0})
    result = response["result"]
    assert [chunk["isFinal"] for chunk in chunks].count(True) == 1 and chunks[-1]["isFinal"]
    assert "".join(chunk["content"] for chunk in chunks) == result["text"]
    assert result["usage"]["completionTokens"] >= 1


def test_a_cancel_ends_a_packaged_stream(frozen: RawSidecar, tiny_model: Path) -> None:
    frozen.request("loadModel", {"modelPath": str(tiny_model)})
    request_id = frozen.send_request(
        "promptStream", {"prompt": "hi", "maxTokens": 100_000, "grammar": LETTERS_FOREVER}
    )
    first = frozen.next_message()
    assert first["method"] == "streamChunk" and not first["params"]["isFinal"], first
    assert frozen.request("cancel", {"requestId": request_id}) == {"cancelled": True}
    chunks, response = frozen.collect_stream(request_id)
    assert response["result"]["finishReason"] == "cancelled"
    assert chunks[-1]["isFinal"]


def test_the_package_exits_0_at_the_end_of_its_input(frozen: RawSidecar) -> None:
    frozen.close_stdin()
    assert frozen.wait_exit() == 0


def test_the_package_exits_0_on_sigterm(frozen: RawSidecar, tiny_model: Path) -> None:
    frozen.request("loadModel", {"modelPath": str(tiny_model)})
    frozen.process.send_signal(signal.SIGTERM)
    assert frozen.wait_exit() == 0


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads /proc/PID/fd")
def test_the_packaged_stdout_guard_moves_fd_1_off_the_protocol_pipe(
    frozen: RawSidecar, tiny_model: Path
) -> None:
    # What llama.cpp (or anything native) writes to fd 1 goes where fd 1 points: once the
    # guard runs that is the log (stderr), never the host's protocol pipe.
    frozen.request("loadModel", {"modelPath": str(tiny_model)})
    fds = Path(f"/proc/{frozen.process.pid}/fd")
    pipe = frozen.process.stdout
    assert pipe is not None
    protocol_pipe = os.readlink(f"/proc/self/fd/{pipe.fileno()}")
    assert os.readlink(fds / "1") == os.readlink(fds / "2") != protocol_pipe
    assert protocol_pipe in {os.readlink(fd) for fd in fds.iterdir()}  # written through a private copy


def test_the_package_streams_on_an_emulated_nehalem(packaged: tuple[str, ...]) -> None:
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        pytest.skip("qemu-user is not installed (make test installs it where it may: as root)")
    # PyInstaller's bootloader starts by exec'ing itself again with LD_LIBRARY_PATH set, and
    # qemu-user emulates only the first program: that second one would run on the host's
    # CPU. So the emulated process gets the environment the bootloader re-execs with.
    # OPENBLAS_CORETYPE, where the host sets it, names the host's CPU, not the emulated one.
    restarted = (
        f"_PYI_ARCHIVE_FILE={PACKAGED_SIDECAR}",
        "_PYI_PARENT_PROCESS_LEVEL=-1",
        "_PYI_LINUX_PROCESS_NAME=llama-sidecar",
        f"LD_LIBRARY_PATH={PACKAGED_SIDECAR.parent / '_internal'}",
    )
    command = (
        *EMPTY_ENVIRONMENT,
        *restarted,
        "OPENBLAS_CORETYPE=Nehalem",
        qemu,
        "-cpu",
        "Nehalem",
        str(PACKAGED_SIDECAR),
    )
    sidecar = RawSidecar(command=command)
    try:
        sidecar.request("initialize", {"protocolVersion": "1.2"}, timeout=EMULATED_WAIT)
        model = sidecar.request(
            "loadModel", {"modelPath": "default", "contextSize": 256}, timeout=EMULATED_WAIT
        )
        assert model["backend"]["variant"] == "sse42", model["backend"]
        chunks, response = sidecar.stream(
            {"prompt": "Hi", "maxTokens": 3, "temperature": 0}, timeout=EMULATED_WAIT
        )
        assert chunks[-1]["isFinal"] and "".join(c["content"] for c in chunks) == response["result"]["text"]
    finally:
        sidecar.stop()
