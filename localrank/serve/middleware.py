"""The outer middlewares: request ids with the access log, and errors in each dialect's shape.

Handlers raise localrank.errors types; `error_middleware` takes the HTTP status from the one
table in errors.py and the body shape from the dialect that owns the matched route.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from localrank import __version__
from localrank.errors import (
    LocalrankError,
    Overloaded,
    RequestTimeout,
    StoreUnavailable,
    http_status,
)
from localrank.logs import REQUEST_ID_HEADER, access_log, is_safe_request_id, request_id_var
from localrank.serve.api import Dialect
from localrank.serve.state import DIALECTS_KEY, METRICS_KEY

log = logging.getLogger(__name__)

# Stamped on every response so clients (and `localrank doctor`) can tell a localrank daemon.
SERVER_HEADER = f"localrank/{__version__}"
STORE_RETRY_AFTER_S = 2


def _incoming_id(request: web.Request) -> str:
    given = request.headers.get(REQUEST_ID_HEADER, "")
    return given if is_safe_request_id(given) else uuid.uuid4().hex


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
        access_log.info(
            "%s %s %d %.1fms",
            request.method,
            request.path,
            status,
            duration_ms,
            extra={
                "method": request.method,
                "path": request.path,
                "status": status,
                "duration_ms": duration_ms,
                "remote": request.remote,
            },
        )
        request_id_var.reset(token)


def _json(
    dialect: Dialect,
    status: int,
    message: str,
    code: str,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body: Any = dialect.error_body(status, message, code, param)
    return web.json_response(body, status=status, headers=headers)


def error_response(request: web.Request, exc: LocalrankError) -> web.Response:
    """`exc` as a response in the dialect of the route that raised it."""
    dialect = request.app[DIALECTS_KEY].for_request(request)
    status = dialect.status_for(exc, http_status(exc))
    headers = None
    if isinstance(exc, Overloaded):
        headers = {"Retry-After": str(max(1, round(exc.retry_after)))}
    elif isinstance(exc, StoreUnavailable):  # the database is away: worth trying again soon
        headers = {"Retry-After": str(STORE_RETRY_AFTER_S)}
    response = _json(dialect, status, exc.message, exc.code, exc.param, headers)
    if isinstance(exc, RequestTimeout):
        response.force_close()  # the rest of the body may still be on its way
    return response


def _route_name(request: web.Request) -> str:
    info = request.match_info.route.resource
    return info.canonical if info is not None else "unmatched"


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves as JSON in the route's dialect; timings and counts go to metrics."""
    registry = request.app[METRICS_KEY]
    started = time.perf_counter()
    route = _route_name(request)
    try:
        response = await handler(request)
    except LocalrankError as exc:
        response = error_response(request, exc)
        registry.inc("localrank_errors_total", route=route, code=exc.code)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 404:
            message, code = f"no route for {request.method} {request.path}", "not_found"
        else:
            message, code = exc.reason, exc.reason.lower().replace(" ", "_")
        allow = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        dialect = request.app[DIALECTS_KEY].for_request(request)
        response = _json(dialect, exc.status, message, code, headers=allow)
        registry.inc("localrank_errors_total", route=route, code=code)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        dialect = request.app[DIALECTS_KEY].for_request(request)
        response = _json(dialect, 500, "internal error", "internal_error")
        registry.inc("localrank_errors_total", route=route, code="internal_error")
    registry.inc("localrank_requests_total", route=route, status=str(response.status))
    registry.observe("localrank_request_seconds", time.perf_counter() - started, route=route)
    return response
