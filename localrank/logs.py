"""Structured logging: text or JSON lines, a request id on every line, and an access log.

The request id lives in a contextvar set by `request_id_middleware`; aiohttp runs each request
in its own task, so every log call made while serving it carries the id. Work handed to another
thread keeps it only if submitted through `contextvars.copy_context().run`.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
import uuid
from datetime import datetime, timezone
from typing import IO, Any

from aiohttp import web
from aiohttp.typedefs import Handler

from localrank import __version__
from localrank.config import Settings

REQUEST_ID_HEADER = "X-Request-ID"
# Stamped on every response so clients (and `localrank doctor`) can tell a localrank daemon.
SERVER_HEADER = f"localrank/{__version__}"
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
access_log = logging.getLogger("localrank.access")

# A client-chosen id goes into every log line: accept only plain tokens (no log injection).
_SAFE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
# Attributes every LogRecord has; anything else on a record came in through `extra=`.
_RECORD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "request_id"}
_HANDLER_NAME = "localrank"


class RequestIdFilter(logging.Filter):
    """Copies the current request id onto each record (as `record.request_id`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, request_id, extras, exc."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        line.update(_extras(record))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`time level logger [request-id] message` for humans (extras appear in JSON only)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s [%(request_id)s] %(message)s")


def setup_logging(settings: Settings, stream: IO[str] | None = None) -> logging.Handler:
    """Send all logging to `stream` (stderr) in settings.log_format at settings.log_level.

    Idempotent: a handler installed by an earlier call is replaced, not duplicated.
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    # Our access log replaces aiohttp's (pass access_log=None to the AppRunner).
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return handler


def current_request_id() -> str:
    """The id of the request being served in this task ("-" outside a request)."""
    return request_id_var.get()


def _incoming_id(request: web.Request) -> str:
    given = request.headers.get(REQUEST_ID_HEADER, "")
    return given if _SAFE_ID.fullmatch(given) else uuid.uuid4().hex


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost middleware: sets the request id (X-Request-ID in and out) and writes one
    access-log line per request with method, path, status and duration."""
    request_id = _incoming_id(request)
    token = request_id_var.set(request_id)
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        response.headers[REQUEST_ID_HEADER] = request_id
        response.headers["Server"] = SERVER_HEADER
        return response
    except web.HTTPException as exc:  # aiohttp's own 404/405/413: still responses
        status = exc.status
        exc.headers[REQUEST_ID_HEADER] = request_id
        exc.headers["Server"] = SERVER_HEADER
        raise
    finally:
        duration_ms = round((time.perf_counter() - started) * 1000, 2)
        access_log.info("%s %s %d %.1fms", request.method, request.path, status, duration_ms,
                        extra={"method": request.method, "path": request.path,
                               "status": status, "duration_ms": duration_ms,
                               "remote": request.remote})
        request_id_var.reset(token)
