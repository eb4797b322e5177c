"""One error tree, and one table mapping each error to an HTTP status and a CLI exit code.

API dialects only format the body; the status always comes from `http_status`.
"""

from __future__ import annotations

from typing import Any


class LocalrankError(Exception):
    """Base of every error localrank raises on purpose."""

    code = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.details = details


class BadRequest(LocalrankError):
    """The request could not be parsed (malformed JSON, wrong top-level shape)."""

    code = "bad_request"


class InvalidInput(LocalrankError):
    """The request parsed but a value is not acceptable (empty input, wrong type, range)."""

    code = "invalid_input"


class Unauthorized(LocalrankError):
    code = "unauthorized"


class Forbidden(LocalrankError):
    code = "forbidden"


class NotFound(LocalrankError):
    code = "not_found"


class Conflict(LocalrankError):
    code = "conflict"


class ModelMismatch(Conflict):
    """A collection is bound to another embedding model than the one serving."""

    code = "model_mismatch"


class TooLarge(LocalrankError):
    """A body, a batch or an input (with truncation off) is over its limit."""

    code = "too_large"


class RequestTimeout(LocalrankError):
    """The client did not send its request body in time."""

    code = "request_timeout"


class UnsupportedMediaType(LocalrankError):
    code = "unsupported_media_type"


class Overloaded(LocalrankError):
    """The bounded queue is full: the client should retry after `retry_after` seconds."""

    code = "overloaded"

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotReady(LocalrankError):
    code = "not_ready"


class ModelError(LocalrankError):
    """A model could not be resolved or loaded: missing files, unknown architecture."""

    code = "model_error"


class RerankerUnavailable(LocalrankError):
    """The request needs the configured reranker and it cannot be loaded (missing files, an
    unsupported architecture): 424, the request depends on a component that failed."""

    code = "reranker_unavailable"


class BackendError(LocalrankError):
    """A backend failed or produced non-finite vectors. Never papered over."""

    code = "backend_error"


class ConfigError(LocalrankError):
    code = "config_error"


class StoreError(LocalrankError):
    code = "store_error"


class StoreUnavailable(StoreError):
    """The database server cannot be reached (down, restarting, network lost). Retryable: the
    request that met it fails, the next one reconnects."""

    code = "store_unavailable"


class StorageFull(StoreUnavailable):
    """The disk under the database is full: nothing was written. Retryable once space is
    freed (507 Insufficient Storage, with Retry-After as any unavailable store)."""

    code = "storage_full"


# error type -> (HTTP status, CLI exit code). Looked up along the MRO, most specific first.
ERROR_TABLE: dict[type[LocalrankError], tuple[int, int]] = {
    BadRequest: (400, 2),
    InvalidInput: (422, 2),
    Unauthorized: (401, 3),
    Forbidden: (403, 3),
    NotFound: (404, 4),
    ModelMismatch: (409, 5),
    Conflict: (409, 5),
    RequestTimeout: (408, 2),
    TooLarge: (413, 2),
    UnsupportedMediaType: (415, 2),
    Overloaded: (429, 6),
    NotReady: (503, 6),
    ModelError: (503, 7),
    RerankerUnavailable: (424, 7),
    BackendError: (500, 8),
    ConfigError: (500, 9),
    StorageFull: (507, 11),
    StoreUnavailable: (503, 11),
    StoreError: (500, 10),
    LocalrankError: (500, 1),
}


def _lookup(exc: BaseException) -> tuple[int, int]:
    for cls in type(exc).__mro__:
        if cls in ERROR_TABLE:
            return ERROR_TABLE[cls]  # type: ignore[index]
    return (500, 1)


def http_status(exc: BaseException) -> int:
    return _lookup(exc)[0]


def exit_code(exc: BaseException) -> int:
    return _lookup(exc)[1]
