"""What the command line configures, in one record passed down the layers."""

from __future__ import annotations

from dataclasses import dataclass

from .transport import DEFAULT_MAX_LINE_BYTES

__all__ = ["PARENT_PID_ENV", "Settings"]

# Set by a host, in the sidecar's environment, to its own pid: the process to outlive is
# then known even if it died before the sidecar got to ask (os.getppid() would already
# name its successor).
PARENT_PID_ENV = "LLAMA_SIDECAR_PARENT_PID"


@dataclass(slots=True, frozen=True)
class Settings:
    """Sidecar-wide settings; every field has the default a plain ``python -m sidecar`` gets."""

    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    # Directories models may be loaded from (symlinks resolved); empty: anywhere.
    model_dirs: tuple[str, ...] = ()
    # Prompt and reply text in the log: off unless debugging, since it is user data.
    log_text: bool = False
    # Loaded models kept at once (None: no limit) and their files' total size; past
    # either, a load unloads the least recently used model.
    max_models: int | None = 3
    max_model_bytes: int | None = None
