"""OpenAI `/v1/embeddings` (and `/embeddings`, which also speaks the kagent shape)."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from aiohttp import web

from localrank.errors import InvalidInput
from localrank.serve.api import INT, STR, Dialect, Operation, Param, arr, one_of, route
from localrank.serve.dialects.fields import (
    DIMENSIONS,
    EMBEDDING,
    INPUT_TYPE,
    INSTRUCTION,
    MINILM,
    MODEL,
    TRUNCATE,
    VEC,
)
from localrank.serve.parsing import (
    check_requested_model,
    field,
    query_mode,
    read_body,
    truncate_flag,
)
from localrank.serve.state import embedding


def _inputs(body: dict[str, Any]) -> list[str] | list[list[int]]:
    raw = body.get("input")
    if raw is None:
        raise InvalidInput("'input' is required", param="input")
    if isinstance(raw, str):
        return [raw]
    if (
        isinstance(raw, list)
        and raw
        and all(isinstance(t, int) and not isinstance(t, bool) for t in raw)
    ):
        return [raw]  # one input given as token ids
    if isinstance(raw, list):
        return raw
    raise InvalidInput("'input' must be a string, a list of strings, or token ids", param="input")


def _encode(vector: np.ndarray, fmt: str) -> list[float] | str:
    if fmt == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


async def embeddings(request: web.Request) -> web.Response:
    body = await read_body(request)
    if "input" not in body and "texts" in body:
        return await _kagent(request, body)
    svc = embedding(request)
    check_requested_model(body, svc.info)
    fmt = field(body, "encoding_format", str, "float")
    if fmt not in ("float", "base64"):
        raise InvalidInput("encoding_format must be float or base64", param="encoding_format")
    inputs = _inputs(body)
    query, instruction = query_mode(body)
    result = await svc.embed(
        inputs,
        query=query,
        instruction=instruction,
        dimensions=field(body, "dimensions", int),
        truncate=truncate_flag(body),
    )
    return web.json_response(
        {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": _encode(v, fmt)}
                for i, v in enumerate(result.vectors)
            ],
            "model": svc.info.display_name,
            "usage": {
                "prompt_tokens": result.prompt_tokens,
                "total_tokens": result.prompt_tokens,
                "truncated_inputs": result.truncated,
            },
        }
    )


async def _kagent(request: web.Request, body: dict[str, Any]) -> web.Response:
    svc = embedding(request)
    check_requested_model(body, svc.info)
    texts = field(body, "texts", list, required=True)
    query, instruction = query_mode(body)
    result = await svc.embed(
        texts, query=query, instruction=instruction, dimensions=field(body, "dimensions", int)
    )
    return web.json_response(
        {
            "embeddings": result.vectors.tolist(),
            "model": svc.info.display_name,
            "dimensions": int(result.vectors.shape[1]),
        }
    )


async def embeddings_get(request: web.Request) -> web.Response:
    text = request.query.get("text")
    if text is None:
        raise InvalidInput("GET /embeddings needs ?text=...", param="text")
    return await _kagent(request, {"texts": [text]})


def error_body(status: int, message: str, code: str, param: str | None) -> dict[str, Any]:
    kind = "invalid_request_error" if status < 500 else "server_error"
    if status == 429:
        kind = "rate_limit_exceeded"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


TOKEN_IDS = arr(INT)
ANY_INPUT = one_of(STR, arr(STR), TOKEN_IDS, arr(TOKEN_IDS))
KAGENT = {"embeddings": [VEC], "model": MINILM, "dimensions": 384}

DIALECT = Dialect(
    "openai",
    error_body,
    (
        route(
            "POST",
            "/v1/embeddings",
            embeddings,
            Operation(
                "OpenAI embeddings.",
                "Document mode unless input_type says query. The official SDK asks for base64.",
                body=(
                    MODEL,
                    Param(
                        "input",
                        ANY_INPUT,
                        "A string, strings, token ids or lists of token ids.",
                        required=True,
                    ),
                    Param("encoding_format", STR, "float (default) or base64 (little-endian f32)."),
                    DIMENSIONS,
                    INPUT_TYPE,
                    INSTRUCTION,
                    TRUNCATE,
                    Param("user", STR, "Ignored."),
                ),
                example={"model": "all-minilm-l6-v2", "input": ["hello world"]},
                response=EMBEDDING,
            ),
        ),
        route(
            "POST",
            "/embeddings",
            embeddings,
            Operation(
                "OpenAI embeddings without /v1; a {texts, model} body answers the kagent shape "
                "{embeddings, model, dimensions}.",
                body=(
                    MODEL,
                    Param("input", ANY_INPUT, "OpenAI shape."),
                    Param("texts", arr(STR), "kagent shape."),
                    DIMENSIONS,
                    INPUT_TYPE,
                    INSTRUCTION,
                ),
                example={"texts": ["hello world"]},
                response=KAGENT,
            ),
        ),
        route(
            "GET",
            "/embeddings",
            embeddings_get,
            Operation(
                "Embed one text given in the query string (kagent shape).",
                query=(Param("text", STR, "The text to embed.", required=True),),
                response=KAGENT,
            ),
        ),
    ),
)
