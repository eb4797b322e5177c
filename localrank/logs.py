"""Structured logging: text or JSON lines, a request id on every line, and an access log.

The request id lives in a contextvar set by the daemon's request-id middleware
(`serve.middleware`); aiohttp runs each request in its own task, so every log call made while
serving it carries the id. Work handed to another thread keeps it only if submitted through
`contextvars.copy_context().run`.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from datetime import datetime, timezone
from typing import IO, Any

from localrank.config import Settings

REQUEST_ID_HEADER = "X-Request-ID"
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


class RepeatFilter(logging.Filter):
    """Lets the same warning or error (same logger, same message template) through at most once
    per `window` seconds, then says how many were held back: a flood of bad connections or a
    full file table must not write thousands of lines."""

    def __init__(self, window: float = 10.0) -> None:
        super().__init__()
        self.window = window
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, str(record.msg))
        now = time.monotonic()
        since, held = self._seen.get(key, (-self.window, 0))
        if now - since < self.window:
            self._seen[key] = (since, held + 1)
            return False
        self._seen[key] = (now, 0)
        if held:
            record.msg = f"{record.msg} (and {held} more like it in the last {self.window:g} s)"
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, request_id, extras, exc."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        line.update(_extras(record))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


# Control characters (and Unicode line breaks) in a message, written as escapes: a message
# carries what clients send (a decoded path with %0a in it, say), and one record must stay one
# line, or a client could forge log lines.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, 0x85)}
_ESCAPES.update(
    {ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t", 0x2028: "\\u2028", 0x2029: "\\u2029"}
)


def one_line(text: str) -> str:
    """`text` with every control character and line break escaped."""
    return text.translate(_ESCAPES)


class TextFormatter(logging.Formatter):
    """`time level logger [request-id] message` for humans (extras appear in JSON only).

    The message is escaped to one line; a traceback, appended after it, is ours to trust."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s [%(request_id)s] %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = one_line(record.message)
        return super().formatMessage(record)


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
    handler.addFilter(RepeatFilter())
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    # Our access log replaces aiohttp's (pass access_log=None to the AppRunner).
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return handler


def is_safe_request_id(value: str) -> bool:
    """A client-chosen request id goes into every log line: only plain short tokens qualify."""
    return _SAFE_ID.fullmatch(value) is not None
