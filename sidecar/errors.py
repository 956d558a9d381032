"""Errors that reach the wire: one class per documented code.

Every layer raises these; the rpc layer is the single place that turns them
(and any unexpected exception) into JSON-RPC error objects. Codes and
meanings are listed in ``protocol/PROTOCOL.md``; a test keeps the two equal.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "ERROR_CLASSES",
    "ContextOverflow",
    "DownloadFailed",
    "DuplicateRequestId",
    "GenerationFailed",
    "InternalError",
    "InvalidParams",
    "InvalidRequest",
    "MessageTooLarge",
    "MethodNotFound",
    "ModelFileNotFound",
    "ModelLoadFailed",
    "ModelPathNotAllowed",
    "NoModelLoaded",
    "NotInitialized",
    "ParseError",
    "RequestCancelled",
    "ShuttingDown",
    "SidecarError",
    "UnknownModelId",
    "UnknownSessionId",
]


class SidecarError(Exception):
    """An error with a JSON-RPC code, a one-sentence message and optional data."""

    code: ClassVar[int]
    name: ClassVar[str]

    def __init__(self, message: str, data: object = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data

    def to_wire(self) -> dict[str, object]:
        """The JSON-RPC ``error`` member for this error."""
        error: dict[str, object] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


class ParseError(SidecarError):
    """The line is not valid UTF-8 JSON."""

    code = -32700
    name = "ParseError"


class InvalidRequest(SidecarError):
    """The JSON is not a valid JSON-RPC 2.0 request object."""

    code = -32600
    name = "InvalidRequest"


class MethodNotFound(SidecarError):
    """No method of that name."""

    code = -32601
    name = "MethodNotFound"


class InvalidParams(SidecarError):
    """A param is missing, unknown, or of the wrong type or range."""

    code = -32602
    name = "InvalidParams"


class InternalError(SidecarError):
    """A bug in the sidecar; the traceback is in the stderr log."""

    code = -32603
    name = "InternalError"


class ModelFileNotFound(SidecarError):
    """The model path does not name a readable file."""

    code = -32001
    name = "ModelFileNotFound"


class NotInitialized(SidecarError):
    """A request other than ``initialize`` came before ``initialize``."""

    code = -32002
    name = "NotInitialized"


class ModelLoadFailed(SidecarError):
    """llama.cpp could not load the file; ``data.reason`` holds its own words."""

    code = -32003
    name = "ModelLoadFailed"


class NoModelLoaded(SidecarError):
    """A request needs a model and none is loaded."""

    code = -32004
    name = "NoModelLoaded"


class UnknownModelId(SidecarError):
    """The ``modelId`` names no loaded model."""

    code = -32005
    name = "UnknownModelId"


class ContextOverflow(SidecarError):
    """The prompt does not fit the context; ``data`` has both sizes."""

    code = -32006
    name = "ContextOverflow"


class ShuttingDown(SidecarError):
    """The sidecar is shutting down and takes no new work."""

    code = -32007
    name = "ShuttingDown"


class GenerationFailed(SidecarError):
    """llama.cpp failed while generating; the stream ended with ``finishReason: error``."""

    code = -32008
    name = "GenerationFailed"


class DuplicateRequestId(SidecarError):
    """A request reused the id of a request that is still in flight."""

    code = -32009
    name = "DuplicateRequestId"


class MessageTooLarge(SidecarError):
    """A line was longer than the maximum line size; it was skipped."""

    code = -32010
    name = "MessageTooLarge"


class ModelPathNotAllowed(SidecarError):
    """The model path resolves outside the directories the sidecar was told to allow."""

    code = -32011
    name = "ModelPathNotAllowed"


class DownloadFailed(SidecarError):
    """A download did not complete or did not verify; ``data`` says why and how far it got."""

    code = -32012
    name = "DownloadFailed"


class UnknownSessionId(SidecarError):
    """The sessionId names no open session."""

    code = -32013
    name = "UnknownSessionId"


class RequestCancelled(SidecarError):
    """A request that has no partial result (loadModel) was cancelled; LSP's code."""

    code = -32800
    name = "RequestCancelled"


ERROR_CLASSES: tuple[type[SidecarError], ...] = (
    ParseError,
    InvalidRequest,
    MethodNotFound,
    InvalidParams,
    InternalError,
    ModelFileNotFound,
    NotInitialized,
    ModelLoadFailed,
    NoModelLoaded,
    UnknownModelId,
    ContextOverflow,
    ShuttingDown,
    GenerationFailed,
    DuplicateRequestId,
    MessageTooLarge,
    ModelPathNotAllowed,
    DownloadFailed,
    UnknownSessionId,
    RequestCancelled,
)
