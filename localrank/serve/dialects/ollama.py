"""Ollama: `POST /api/embed` and the legacy `POST /api/embeddings`.

As in Ollama, an empty input is not an error: it answers no embeddings (clients send it to
preload a model). Ollama's clients send the model name they were configured with; an unknown
one answers Ollama's 404 `{"error": "model 'x' not found"}`.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from localrank.errors import InvalidInput, NotFound
from localrank.serve.api import OBJ, STR, Dialect, Operation, Param, arr, one_of, route
from localrank.serve.dialects.fields import DIMENSIONS, MINILM, MODEL, TRUNCATE, VEC
from localrank.serve.embedding import EmbeddingService
from localrank.serve.parsing import (
    check_requested_model,
    field,
    query_mode,
    read_body,
    truncate_flag,
)
from localrank.serve.state import embedding


def check_ollama_model(body: dict[str, Any], svc: EmbeddingService) -> None:
    """check_requested_model, with Ollama's implicit `:latest` tag and its own 404 wording."""
    name = field(body, "model", str)
    if name is not None and name.endswith(":latest"):
        body = {**body, "model": name.removesuffix(":latest")}
    try:
        check_requested_model(body, svc.info)
    except NotFound:
        raise NotFound(f"model {name!r} not found", param="model") from None


def _inputs(body: dict[str, Any]) -> list[str]:
    raw = body.get("input")
    if raw is None or raw == "":
        return []
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and all(isinstance(t, str) for t in raw):
        return raw
    raise InvalidInput(
        "invalid input type: 'input' must be a string or a list of strings", param="input"
    )


def _common(body: dict[str, Any]) -> None:
    """Fields accepted for compatibility: the model is always loaded, options do not apply."""
    field(body, "options", dict)
    field(body, "keep_alive", (str, int, float))


async def embed(request: web.Request) -> web.Response:
    started = time.perf_counter_ns()
    body = await read_body(request)
    svc = embedding(request)
    check_ollama_model(body, svc)
    _common(body)
    inputs = _inputs(body)
    query, instruction = query_mode(body)
    dimensions = field(body, "dimensions", int)
    truncate = truncate_flag(body)
    embeddings: list[list[float]] = []
    tokens = 0
    if inputs:
        result = await svc.embed(
            inputs, query=query, instruction=instruction, dimensions=dimensions, truncate=truncate
        )
        embeddings, tokens = result.vectors.tolist(), result.prompt_tokens
    return web.json_response(
        {
            "model": svc.info.display_name,
            "embeddings": embeddings,
            "total_duration": time.perf_counter_ns() - started,
            "load_duration": 0,
            "prompt_eval_count": tokens,
        }
    )


async def embeddings(request: web.Request) -> web.Response:
    """Legacy `{"model", "prompt"}` -> `{"embedding": [...]}` (empty for an empty prompt)."""
    body = await read_body(request)
    svc = embedding(request)
    check_ollama_model(body, svc)
    _common(body)
    prompt = field(body, "prompt", str, "")
    query, instruction = query_mode(body)
    if not prompt:
        return web.json_response({"embedding": []})
    result = await svc.embed(
        [prompt], query=query, instruction=instruction, truncate=truncate_flag(body)
    )
    return web.json_response({"embedding": result.vectors[0].tolist()})


def error_body(status: int, message: str, code: str, param: str | None) -> dict[str, Any]:
    return {"error": message}


DIALECT = Dialect(
    "ollama",
    error_body,
    (
        route(
            "POST",
            "/api/embed",
            embed,
            Operation(
                "Ollama embed (what ollama.Client.embed calls).",
                body=(
                    MODEL,
                    Param(
                        "input",
                        one_of(STR, arr(STR)),
                        "Text or texts; empty answers no embeddings.",
                    ),
                    TRUNCATE,
                    DIMENSIONS,
                    Param("options", OBJ, "Accepted, not used."),
                    Param("keep_alive", STR, "Accepted, not used (the model stays loaded)."),
                ),
                example={"model": "all-minilm-l6-v2", "input": ["hello world"]},
                response={
                    "model": MINILM,
                    "embeddings": [VEC],
                    "total_duration": 4200000,
                    "load_duration": 0,
                    "prompt_eval_count": 4,
                },
            ),
        ),
        route(
            "POST",
            "/api/embeddings",
            embeddings,
            Operation(
                "Ollama's legacy embeddings: one prompt, one vector.",
                body=(MODEL, Param("prompt", STR, "The text."), Param("options", OBJ, "Ignored.")),
                example={"model": "all-minilm-l6-v2", "prompt": "hello world"},
                response={"embedding": VEC},
            ),
        ),
    ),
)
