"""What a request cannot make the sidecar do: open files outside the allowed places, leak text to logs."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.errors import ModelPathNotAllowed
from sidecar.model_paths import ModelPaths

from .harness import RawSidecar


def test_models_inside_the_allowed_directory_load(
    confined: RawSidecar, models_dir: Path, tiny_model: Path
) -> None:
    (models_dir / "tiny.gguf").write_bytes(tiny_model.read_bytes())
    info = confined.request("loadModel", {"modelPath": str(models_dir / "tiny.gguf")})
    assert info["modelPath"] == str(models_dir / "tiny.gguf")


def test_paths_outside_are_refused_however_they_are_spelled(
    confined: RawSidecar, models_dir: Path, tiny_model: Path
) -> None:
    (models_dir / "escape.gguf").symlink_to(tiny_model)
    for path in (str(tiny_model), str(models_dir / ".." / tiny_model.name), str(models_dir / "escape.gguf")):
        error = confined.error("loadModel", {"modelPath": path})
        assert error["code"] == -32011 and error["data"] == {"modelPath": path}
    assert confined.request("listModels") == {"models": []}


def test_a_sibling_directory_with_a_common_prefix_is_outside(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models-evil").mkdir()
    paths = ModelPaths([str(tmp_path / "models")])
    with pytest.raises(ModelPathNotAllowed):
        paths.resolve(str(tmp_path / "models-evil" / "x.gguf"))
    assert paths.resolve(str(tmp_path / "models" / "x.gguf")) == str(tmp_path / "models" / "x.gguf")


def test_the_embedded_model_is_always_allowed(confined: RawSidecar, default_model: str) -> None:
    assert confined.request("loadModel", {"modelPath": "default"})["modelPath"] == default_model


@pytest.mark.parametrize("log_text", [False, True])
def test_prompt_and_reply_text_reach_the_log_only_when_asked(tiny_model: Path, log_text: bool) -> None:
    sidecar = RawSidecar(*(["--log-text"] if log_text else []))  # the harness runs at debug level
    try:
        sidecar.initialize()
        sidecar.request("loadModel", {"modelPath": str(tiny_model)})
        marker = "zebra-secret-7731"
        sidecar.request("prompt", {"prompt": marker, "maxTokens": 3})
        sidecar.request("prompt", {"messages": [{"role": "user", "content": marker}], "maxTokens": 3})
        sidecar.request("shutdown")
        sidecar.wait_exit()
    finally:
        sidecar.stop()
    log = b"".join(sidecar.stderr_lines).decode(errors="replace")
    assert (marker in log) is log_text
    assert "prompt tokens" in log  # requests are logged either way, by size
