"""The OpenAPI 3.1 document, built from the dialect registry the app was made from.

Every route of the app is walked; each is documented by the Operation its dialect declared with
it and by its handler's request type (the declaration its requests are checked against), and a
route that no dialect declares is flagged `x-undocumented` (a test fails on it).
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from localrank import __version__
from localrank.declare import field_schema, record_of, record_schema
from localrank.serve.api import Dialect, DialectIndex, Operation, Route
from localrank.serve.requests import Served, served
from localrank.serve.state import DIALECTS_KEY

_SKIPPED_METHODS = frozenset({"HEAD", "OPTIONS"})  # HEAD is added by aiohttp to every GET
_PATH_PARAM = re.compile(r"\{(\w+)")
# What the middlewares can answer on any route: malformed (400), token (401), Host / Origin
# (403), not found (404), slow body (408), too large (413), not JSON (415), invalid (422),
# queue full (429), the configured reranker cannot load (424), model not ready (503). Dialects
# add their own (409).
_ERROR_STATUSES = (400, 401, 403, 404, 408, 413, 415, 422, 424, 429, 503)
_DESCRIPTION = (
    "A local embedding and rerank daemon. One model, many dialects: OpenAI, Cohere/Jina, "
    "Hugging Face TEI, Ollama and the native API, plus collections and search. Errors come in "
    "each dialect's own shape."
)


def _request_body(r: Route, takes: type, ctx: Served | None) -> dict[str, Any] | None:
    if not record_of(takes).on_wire("body"):
        return None
    media: dict[str, Any] = {"schema": record_schema(takes, ctx, "body")}
    if r.doc.example is not None:
        media["example"] = r.doc.example
    return {"required": r.doc.body_required, "content": {"application/json": media}}


def _parameters(path: str, takes: type | None, ctx: Served | None) -> list[dict[str, Any]]:
    """Path parameters (in the path's order), then the query's, from the request type."""
    fields = {} if takes is None else {f.wire: f for f in record_of(takes).on_wire()}
    params = []
    for name in _PATH_PARAM.findall(path):
        f = fields[name]
        params.append(
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": field_schema(f, ctx, in_json=False),
            }
        )
    for f in fields.values():
        if f.where == "query":
            params.append(
                {
                    "name": f.wire,
                    "in": "query",
                    "required": f.required,
                    "description": f.doc,
                    "schema": field_schema(f, ctx, in_json=False),
                }
            )
    return params


def _success(op: Operation) -> dict[str, Any]:
    media: dict[str, Any] = {}
    if op.response is not None:
        media["example"] = op.response
    out = {str(op.status): {"description": "OK", "content": {op.content_type: media}}}
    for status in op.also:
        out[str(status)] = {"description": "OK", "content": {op.content_type: {}}}
    return out


def _errors(dialect: Dialect) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/error_{dialect.name}"}
    return {
        code: {
            "description": "An error, in this route's dialect",
            "content": {"application/json": {"schema": ref}},
        }
        for code in map(str, sorted({*_ERROR_STATUSES, *dialect.error_statuses}))
    }


def _operation(
    method: str, path: str, route: web.AbstractRoute, index: DialectIndex, ctx: Served | None
) -> dict[str, Any]:
    found = index.lookup(method, path)
    out: dict[str, Any] = {"operationId": f"{method.lower()}_{_slug(path)}"}
    if found is None:
        doc = (getattr(route.handler, "__doc__", None) or "").strip()
        out.update(
            {
                "summary": doc.splitlines()[0] if doc else f"{method} {path}",
                "tags": ["other"],
                "x-undocumented": True,
                "responses": {"200": {"description": "OK"}, **_errors(index.default)},
            }
        )
        return out
    dialect, declared = found
    op = declared.doc
    out.update({"summary": op.summary, "tags": [dialect.name]})
    if op.description:
        out["description"] = op.description
    if path != path.rstrip("/"):
        out["description"] = f"Same as {path.rstrip('/')}. {op.description}".strip()
    params = _parameters(path, declared.takes, ctx)
    if params:
        out["parameters"] = params
    body = None if declared.takes is None else _request_body(declared, declared.takes, ctx)
    if body is not None:
        out["requestBody"] = body
    out["responses"] = {**_success(op), **_errors(dialect)}
    return out


def _slug(path: str) -> str:
    slug = re.sub(r"[^a-zA-Z0-9]+", "_", path).strip("_")
    return (slug or "root") + ("_slash" if path.endswith("/") and path != "/" else "")


def _error_schemas(index: DialectIndex) -> dict[str, Any]:
    return {
        f"error_{d.name}": {
            "type": "object",
            "example": d.error_body(422, "'input' must not be empty", "invalid_input", "input"),
        }
        for d in index.dialects
    }


def build_spec(app: web.Application) -> dict[str, Any]:
    """Every route of `app` (HEAD twins aside), documented from its dialect's declaration."""
    index = app[DIALECTS_KEY]
    ctx = served(app)  # bounds set by the served model (documented once it is loaded)
    paths: dict[str, dict[str, Any]] = {}
    for route in app.router.routes():
        resource = route.resource
        if route.method in _SKIPPED_METHODS or resource is None:
            continue
        path = resource.canonical
        paths.setdefault(path, {})[route.method.lower()] = _operation(
            route.method, path, route, index, ctx
        )
    return {
        "openapi": "3.1.0",
        "info": {"title": "localrank", "version": __version__, "description": _DESCRIPTION},
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": _error_schemas(index),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Only when a token is configured.",
                }
            },
        },
    }
