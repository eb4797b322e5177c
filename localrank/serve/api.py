"""How an API dialect declares itself: its routes, what each takes and returns, its error shape.

Each module in `serve/dialects/` builds one `Dialect`; `serve/dialects/__init__.py` lists them
(the registry). `make_app` adds every route from the registry and records which dialect owns it
(`DialectIndex`), so the error middleware renders a failure in the matched route's dialect and
`/openapi.json` documents every route from the same declarations. Adding a dialect is one new
module plus one registry line.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from localrank.declare import record_of
from localrank.errors import LocalrankError

Handler = Callable[..., Awaitable[web.StreamResponse]]
ErrorBody = Callable[[int, str, str, str | None], Any]


@dataclass(frozen=True)
class Operation:
    """What a route answers, for /openapi.json and /docs. What it takes is its handler's
    request type (see `route`)."""

    summary: str
    description: str = ""
    example: dict[str, Any] | None = None
    response: Any = None
    status: int = 200
    also: tuple[int, ...] = ()  # other success statuses (202 when a request queues a job)
    content_type: str = "application/json"
    # Whether a route whose request type has body fields needs a body (reindex takes none).
    body_required: bool = True


@dataclass(frozen=True)
class Route:
    """A route: `handler(request)`, or `handler(request, req)` where `req` is its request type
    (a declared dataclass: body, query and path fields), read and checked before the call. The
    same type documents the route: what it takes is declared once."""

    method: str
    path: str
    handler: Handler
    doc: Operation
    takes: type | None = None

    @property
    def path_params(self) -> tuple[str, ...]:
        return tuple(_PATH_PARAM.findall(self.path))


@dataclass(frozen=True)
class Dialect:
    """One wire format: its routes and the JSON body its errors take.

    `error_body(status, message, code, param)` renders an error; `statuses` overrides the
    status of some error types (TEI answers a failed model call with 424); `error_statuses`
    are the statuses its routes answer beyond those every route can (documented in OpenAPI).
    `body_types` are the media types its request bodies may be declared as (always parsed as
    JSON): Ollama reads any, and browser clients of it post JSON strings that fetch() labels
    text/plain.
    """

    name: str
    error_body: ErrorBody
    routes: tuple[Route, ...]
    statuses: Mapping[type[LocalrankError], int] = field(default_factory=dict)
    error_statuses: tuple[int, ...] = ()
    body_types: frozenset[str] = frozenset({"application/json"})

    def status_for(self, exc: LocalrankError, default: int) -> int:
        for cls in type(exc).__mro__:
            if cls in self.statuses:
                return self.statuses[cls]
        return default


def localrank_error_body(status: int, message: str, code: str, param: str | None) -> dict[str, Any]:
    """localrank's own error shape (the search API, operations, and unknown paths)."""
    return {"error": {"message": message, "type": code, "code": status, "param": param}}


_PATH_PARAM = re.compile(r"\{(\w+)")


def request_type(handler: Handler) -> type | None:
    """The declared dataclass a handler takes after the request (its second parameter)."""
    params = list(inspect.signature(handler).parameters)
    if len(params) < 2:
        return None
    hint = typing.get_type_hints(handler)[params[1]]
    if not (dataclasses.is_dataclass(hint) and isinstance(hint, type)):
        raise TypeError(f"{handler.__qualname__} takes {hint!r}, not a declared dataclass")
    return hint


def route(method: str, path: str, handler: Handler, doc: Operation) -> Route:
    """A route whose request type is read from its handler's signature. Its path parameters
    must be exactly the type's path fields (checked here, at import)."""
    takes = request_type(handler)
    r = Route(method, path, handler, doc, takes)
    declared = () if takes is None else tuple(f.wire for f in record_of(takes).on_wire("path"))
    if sorted(declared) != sorted(r.path_params):
        raise TypeError(f"{method} {path}: path parameters {r.path_params}, declared {declared}")
    return r


_PATH_PATTERN = re.compile(r"\{(\w+):[^}]*\}")


def canonical_path(path: str) -> str:
    """A route path as aiohttp's `resource.canonical` shows it: `{name:.+}` becomes `{name}`."""
    return _PATH_PATTERN.sub(r"{\1}", path)


class DialectIndex:
    """Which dialect owns each route of an app, and which renders errors for unmatched paths."""

    def __init__(self, dialects: tuple[Dialect, ...], default: Dialect) -> None:
        self.dialects = dialects
        self.default = default
        self._by_path: dict[str, Dialect] = {}
        self._by_route: dict[tuple[str, str], tuple[Dialect, Route]] = {}
        for d in dialects:
            for r in d.routes:
                path = canonical_path(r.path)
                self._by_path.setdefault(path, d)
                self._by_route[(r.method, path)] = (d, r)

    def routes(self) -> Iterator[tuple[Dialect, Route]]:
        for d in self.dialects:
            for r in d.routes:
                yield d, r

    def for_request(self, request: web.Request) -> Dialect:
        """The matched route's dialect (a path may have one per method: `GET /` is Ollama's,
        `POST /` TEI's); for a path with no route for this method (405), the dialect that
        registered the path first; otherwise the default."""
        resource = request.match_info.route.resource
        path = resource.canonical if resource is not None else request.path
        method = "GET" if request.method == "HEAD" else request.method
        route = self._by_route.get((method, path))
        if route is not None:
            return route[0]
        return self._by_path.get(path, self.default)

    def lookup(self, method: str, path: str) -> tuple[Dialect, Route] | None:
        """The dialect and declaration of a route, by method and canonical path."""
        return self._by_route.get((method, canonical_path(path)))
