"""How an API dialect declares itself: its routes, what each takes and returns, its error shape.

Each module in `serve/dialects/` builds one `Dialect`; `serve/dialects/__init__.py` lists them
(the registry). `make_app` adds every route from the registry and records which dialect owns it
(`DialectIndex`), so the error middleware renders a failure in the matched route's dialect and
`/openapi.json` documents every route from the same declarations. Adding a dialect is one new
module plus one registry line.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from localrank.errors import LocalrankError

Schema = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ErrorBody = Callable[[int, str, str, str | None], Any]

STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
NUM: Schema = {"type": "number"}
BOOL: Schema = {"type": "boolean"}
OBJ: Schema = {"type": "object"}


def arr(items: Schema) -> Schema:
    return {"type": "array", "items": items}


def one_of(*schemas: Schema) -> Schema:
    return {"oneOf": list(schemas)}


@dataclass(frozen=True)
class Param:
    """A JSON body field or a query-string parameter."""

    name: str
    schema: Schema
    description: str
    required: bool = False


@dataclass(frozen=True)
class Operation:
    """What a route takes and returns, for /openapi.json and /docs."""

    summary: str
    description: str = ""
    body: tuple[Param, ...] = ()
    query: tuple[Param, ...] = ()
    example: dict[str, Any] | None = None
    response: Any = None
    status: int = 200
    also: tuple[int, ...] = ()  # other success statuses (202 when a request queues a job)
    content_type: str = "application/json"


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    doc: Operation


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


def route(method: str, path: str, handler: Handler, doc: Operation) -> Route:
    return Route(method, path, handler, doc)


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
