"""The OpenAPI 3.1 document, built from the dialect registry the app was made from.

Every route of the app is walked; each is documented by the Operation its dialect declared with
it, and a route that no dialect declares is flagged `x-undocumented` (a test fails on it).
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from localrank import __version__
from localrank.serve.api import Dialect, DialectIndex, Operation, Param
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


def _param_schema(p: Param) -> dict[str, Any]:
    return {**p.schema, "description": p.description}


def _request_body(op: Operation) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {p.name: _param_schema(p) for p in op.body},
    }
    required = [p.name for p in op.body if p.required]
    if required:
        schema["required"] = required
    media: dict[str, Any] = {"schema": schema}
    if op.example is not None:
        media["example"] = op.example
    return {"required": bool(required), "content": {"application/json": media}}


def _parameters(path: str, op: Operation | None) -> list[dict[str, Any]]:
    params = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _PATH_PARAM.findall(path)
    ]
    for p in op.query if op else ():
        params.append(
            {
                "name": p.name,
                "in": "query",
                "required": p.required,
                "description": p.description,
                "schema": p.schema,
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
    method: str, path: str, route: web.AbstractRoute, index: DialectIndex
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
    params = _parameters(path, op)
    if params:
        out["parameters"] = params
    if op.body:
        out["requestBody"] = _request_body(op)
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
    paths: dict[str, dict[str, Any]] = {}
    for route in app.router.routes():
        resource = route.resource
        if route.method in _SKIPPED_METHODS or resource is None:
            continue
        path = resource.canonical
        paths.setdefault(path, {})[route.method.lower()] = _operation(
            route.method, path, route, index
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
