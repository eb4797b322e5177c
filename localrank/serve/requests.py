"""A request read into its route's declared type before the handler runs.

The body (JSON), the query string and the path parameters are checked against the one
declaration that also documents the route (`serve/openapi.py`), with the served model's limits
(`Served`) for the bounds that depend on it: a mismatch between what is documented and what is
checked cannot arise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from localrank.declare import Dynamic, parse_request, record_of
from localrank.engine.core import MIN_DIMENSIONS
from localrank.errors import BadRequest
from localrank.serve.api import Handler, Route
from localrank.serve.model_service import ModelService
from localrank.serve.state import STATE_KEY

# What the declarations may leave to the served model (unknown, so unchecked and undocumented,
# while it loads: every route that needs it answers 503 then).
DIM = Dynamic("dim")
MIN_DIM = Dynamic("min_dimensions")
MAX_TOKEN_ID = Dynamic("max_token_id")
RERANK_METHODS = Dynamic("rerank_methods")


@dataclass(frozen=True)
class Served:
    """The served model's limits, as the declarations read them (see the Dynamic keys above)."""

    dim: int
    min_dimensions: int
    max_token_id: int
    rerank_methods: tuple[str, ...]

    @classmethod
    def of(cls, service: ModelService | None) -> Served | None:
        if service is None:
            return None
        dim = service.info.backend.dim
        methods = ("bi-encoder", "cross-encoder") if service.cross_encoder else ("bi-encoder",)
        return cls(
            dim=dim,
            min_dimensions=min(MIN_DIMENSIONS, dim),
            max_token_id=service.engine.tokenizer.vocab_size - 1,
            rerank_methods=methods,
        )


def served(app: web.Application) -> Served | None:
    return Served.of(app[STATE_KEY].models)


async def read_body(request: web.Request) -> dict[str, Any]:
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


def endpoint(r: Route) -> Handler:
    """The aiohttp handler of a route: its request read into the declared type, then the
    route's handler called with it."""
    takes = r.takes
    if takes is None:
        return r.handler
    wants_body = bool(record_of(takes).on_wire("body"))

    async def handle(request: web.Request) -> web.StreamResponse:
        body: dict[str, Any] = {}
        # body_exists, not can_read_body: the security middleware has read the body already
        # (aiohttp keeps the bytes), and a read body cannot be read "again" by that test.
        if wants_body and (r.doc.body_required or request.body_exists):
            body = await read_body(request)
        req: Any = parse_request(
            takes,
            body=body,
            query=request.query,
            path=request.match_info,
            ctx=served(request.app),
        )
        return await r.handler(request, req)

    handle.__doc__ = r.handler.__doc__
    return handle
