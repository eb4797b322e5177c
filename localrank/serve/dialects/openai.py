"""OpenAI `/v1/embeddings` (and `/embeddings`, which also speaks the kagent shape), and the model
list `GET /v1/models` (`/v1/models/{id}`) that OpenAI-style clients read to list or validate
models."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from aiohttp import web

from localrank.engine.types import ModelInfo
from localrank.errors import InvalidInput, NotFound
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
from localrank.serve.dialects.listing import ModelFacts, model_facts
from localrank.serve.parsing import (
    check_requested_model,
    field,
    query_mode,
    read_body,
    serves,
    truncate_flag,
    unknown_model,
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


def _model_object(name: str, info: ModelInfo, facts: ModelFacts) -> dict[str, Any]:
    """One entry of /v1/models: OpenAI's fields, then vLLM's `root` and `max_model_len`."""
    return {
        "id": name,
        "object": "model",
        "created": facts.created,
        "owned_by": "localrank",
        "root": info.model_id,
        "max_model_len": info.backend.max_tokens,
    }


async def models(request: web.Request) -> web.Response:
    """Every name the served model answers to, each as a model (clients that validate their
    configured name against this list find it, whichever name it is)."""
    svc = embedding(request)
    info = svc.info
    facts = await model_facts(info)
    data = [_model_object(n, info, facts) for n in info.names]
    rerank = svc.rerank_status()
    if rerank["configured"]:
        # The reranker, listed beside the embedding model (loaded or not).
        data.append(
            {
                "id": rerank["configured"],
                "object": "model",
                "created": facts.created,
                "owned_by": "localrank",
                "root": rerank["configured"],
                "kind": "reranker",
                "loaded": rerank["loaded"],
            }
        )
    return web.json_response(
        {
            "object": "list",
            "data": data,
            "rerank_method": rerank["rerank_method"],
            "reranker": rerank,
        }
    )


async def model(request: web.Request) -> web.Response:
    info = embedding(request).info
    name = request.match_info["model"]
    if not serves(info, name):
        raise NotFound(unknown_model(name, info), param="model")
    return web.json_response(_model_object(name, info, await model_facts(info)))


def error_body(status: int, message: str, code: str, param: str | None) -> dict[str, Any]:
    kind = "invalid_request_error" if status < 500 else "server_error"
    if status == 429:
        kind = "rate_limit_exceeded"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


TOKEN_IDS = arr(INT)
ANY_INPUT = one_of(STR, arr(STR), TOKEN_IDS, arr(TOKEN_IDS))
KAGENT = {"embeddings": [VEC], "model": MINILM, "dimensions": 384}
MODEL_OBJECT = {
    "id": MINILM,
    "object": "model",
    "created": 1764000000,
    "owned_by": "localrank",
    "root": MINILM,
    "max_model_len": 256,
}

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
            "/v1/models",
            models,
            Operation(
                "OpenAI model list: every name the served model answers to, one entry each.",
                response={"object": "list", "data": [MODEL_OBJECT]},
            ),
        ),
        route(
            "GET",
            "/v1/models/{model:.+}",
            model,
            Operation(
                "One OpenAI model object, for any name the served model answers to; 404 "
                "listing the names otherwise.",
                response=MODEL_OBJECT,
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
