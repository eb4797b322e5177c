"""Request parsing, and errors rendered in each API dialect's own shape.

Handlers raise localrank.errors types; `error_middleware` picks the HTTP status from the one
table in errors.py and the body shape from the route's dialect.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from localrank.errors import (
    BackendError,
    BadRequest,
    InvalidInput,
    LocalrankError,
    Overloaded,
    http_status,
)
from localrank.serve.metrics import Registry

log = logging.getLogger(__name__)

REGISTRY_KEY = web.AppKey("registry", Registry)

_TEI_TYPES = {400: "Validation", 413: "Validation", 422: "Validation", 429: "Overloaded",
              503: "Unhealthy"}


def dialect_for(path: str) -> str:
    path = path.rstrip("/") or "/"
    if path in ("/v1/embeddings", "/embeddings"):
        return "openai"
    if path in ("/v1/rerank", "/v2/rerank"):
        return "cohere"
    if path in ("/embed", "/rerank", "/tokenize", "/info", "/embed_all", "/decode"):
        return "tei"
    if path in ("/api/embed", "/api/embeddings"):
        return "ollama"
    if path.startswith("/api/v1"):
        return "native"
    return "localrank"


def error_body(dialect: str, status: int, message: str, code: str,
               param: str | None = None) -> dict[str, Any]:
    if dialect == "openai":
        kind = "invalid_request_error" if status < 500 else "server_error"
        if status == 429:
            kind = "rate_limit_exceeded"
        return {"error": {"message": message, "type": kind, "param": param, "code": code}}
    if dialect == "cohere":
        return {"message": message}
    if dialect == "tei":
        fallback = "Validation" if status < 500 else "Backend"
        return {"error": message, "error_type": _TEI_TYPES.get(status, fallback)}
    if dialect == "ollama":
        return {"error": message}
    if dialect == "native":
        return {"detail": message, "code": code}
    return {"error": {"message": message, "type": code, "code": status, "param": param}}


def error_response(request: web.Request, exc: LocalrankError) -> web.Response:
    status = http_status(exc)
    dialect = dialect_for(request.path)
    if dialect == "tei" and isinstance(exc, BackendError):
        status = 424  # TEI's status for a failed model call
    body = error_body(dialect, status, exc.message, exc.code, exc.param)
    response = web.json_response(body, status=status)
    if isinstance(exc, Overloaded):
        response.headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    return response


def _route_name(request: web.Request) -> str:
    info = request.match_info.route.resource
    return info.canonical if info is not None else "unmatched"


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves as JSON in the route's dialect; timings and counts go to metrics."""
    registry = request.app[REGISTRY_KEY]
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
        message = exc.reason if exc.status != 404 else f"no route for {request.method} " \
                                                        f"{request.path}"
        code = "not_found" if exc.status == 404 else exc.reason.lower().replace(" ", "_")
        body = error_body(dialect_for(request.path), exc.status, message, code)
        response = web.json_response(body, status=exc.status,
                                     headers={k: v for k, v in exc.headers.items()
                                              if k.lower() == "allow"})
        registry.inc("localrank_errors_total", route=route, code=code)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        body = error_body(dialect_for(request.path), 500, "internal error", "internal_error")
        response = web.json_response(body, status=500)
        registry.inc("localrank_errors_total", route=route, code="internal_error")
    registry.inc("localrank_requests_total", route=route, status=str(response.status))
    registry.observe("localrank_request_seconds", time.perf_counter() - started, route=route)
    return response


async def read_json(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object, or BadRequest naming what is wrong."""
    raw = await request.read()
    if not raw:
        raise BadRequest("the request body is empty; send a JSON object")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = None,
          *, required: bool = False) -> Any:
    """A typed field of a JSON body. bool is not accepted where int is asked."""
    if name not in body or body[name] is None:
        if required:
            raise InvalidInput(f"{name!r} is required", param=name)
        return default
    value = body[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise InvalidInput(f"{name!r} must be {_kind_name(kinds)}", param=name)
    if not isinstance(value, kinds):
        raise InvalidInput(f"{name!r} must be {_kind_name(kinds)}, not "
                           f"{type(value).__name__}", param=name)
    return value


def _kind_name(kinds: tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
             list: "a list", dict: "an object"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def positive_int(body: dict[str, Any], name: str, default: int | None = None) -> int | None:
    value = field(body, name, int, default)
    if value is not None and value <= 0:
        raise InvalidInput(f"{name!r} must be a positive integer", param=name)
    return value

