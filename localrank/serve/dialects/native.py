"""The native API, in the shapes of the embed-rerank service localrank replaces, so its clients
work unchanged (trailing-slash forms included)."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from localrank.errors import InvalidInput
from localrank.serve.api import BOOL, INT, OBJ, STR, Dialect, Operation, Param, arr, one_of, route
from localrank.serve.dialects.fields import (
    DIMENSIONS,
    INPUT_TYPE,
    INSTRUCTION,
    MINILM,
    QUERY,
    TRUNCATE,
    VEC,
)
from localrank.serve.parsing import field, positive_int, query_mode, read_body, truncate_flag
from localrank.serve.state import embedding


def _model_info(request: web.Request) -> dict[str, object]:
    info = embedding(request).info
    return {
        "name": info.display_name,
        "model_id": info.model_id,
        "revision": info.revision,
        "dim": info.backend.dim,
        "pooling": info.backend.pooling,
        "dtype": info.backend.dtype,
        "max_tokens": info.backend.max_tokens,
        "fallback": info.fallback_reason is not None,
    }


async def embed(request: web.Request) -> web.Response:
    started = time.perf_counter()
    body = await read_body(request)
    svc = embedding(request)
    texts = field(body, "texts", list, required=True)
    positive_int(body, "batch_size")  # accepted for compatibility: the scheduler batches
    field(body, "normalize", bool, True)  # vectors are always L2-normalised (the recipe's)
    query, instruction = query_mode(body)
    result = await svc.embed(
        texts,
        query=query,
        instruction=instruction,
        dimensions=field(body, "dimensions", int),
        truncate=truncate_flag(body),
    )
    return web.json_response(
        {
            "vectors": result.vectors.tolist(),
            "dim": int(result.vectors.shape[1]),
            "processing_time": time.perf_counter() - started,
            "device": svc.info.backend.device,
            "backend": svc.info.backend.backend,
            "normalized": True,
            "model_info": _model_info(request),
            "usage": {
                "prompt_tokens": result.prompt_tokens,
                "total_tokens": result.prompt_tokens,
                "texts": len(texts),
                "truncated_inputs": result.truncated,
            },
        }
    )


async def rerank(request: web.Request) -> web.Response:
    started = time.perf_counter()
    body = await read_body(request)
    svc = embedding(request)
    query = field(body, "query", str, required=True)
    # `passages` (the embed-rerank name) or `documents`; a null one counts as absent.
    name = "passages" if body.get("passages") is not None else "documents"
    docs = field(body, name, list, required=True)
    texts = [
        d["text"] if isinstance(d, dict) and isinstance(d.get("text"), str) else d for d in docs
    ]
    top_k = positive_int(body, "top_k", len(texts))
    _, instruction = query_mode(body, default_query=True)
    if not query.strip():
        raise InvalidInput("query must not be empty", param="query")
    method = field(body, "method", str)
    scored = await svc.score(
        query, texts, instruction=instruction, truncate=truncate_flag(body), method=method
    )
    scores, tokens = scored.scores, scored.tokens
    order = sorted(range(len(texts)), key=lambda i: -scores[i])[:top_k]
    return web.json_response(
        {
            "results": [{"text": texts[i], "score": float(scores[i]), "index": i} for i in order],
            "query": query,
            "backend": svc.info.backend.backend,
            "device": svc.info.backend.device,
            "method": scored.method,
            "model": scored.model,
            "processing_time": time.perf_counter() - started,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


def error_body(status: int, message: str, code: str, param: str | None) -> dict[str, Any]:
    return {"detail": message, "code": code}


EMBED = Operation(
    "Embed texts (native shape).",
    body=(
        Param("texts", arr(STR), "Texts to embed.", required=True),
        Param("batch_size", INT, "Accepted; the scheduler batches."),
        Param("normalize", BOOL, "Accepted; vectors are always unit length."),
        INPUT_TYPE,
        INSTRUCTION,
        DIMENSIONS,
        TRUNCATE,
    ),
    example={"texts": ["hello world"]},
    response={
        "vectors": [VEC],
        "dim": 384,
        "processing_time": 0.004,
        "device": "cpu",
        "model_info": {"name": MINILM},
        "usage": {"prompt_tokens": 4, "total_tokens": 4},
    },
)
RERANK = Operation(
    "Rerank passages against a query (native shape).",
    body=(
        QUERY,
        Param("passages", arr(STR), "Texts to rank (or `documents`)."),
        Param("documents", arr(one_of(STR, OBJ)), "Same as passages."),
        Param("top_k", INT, "Return only the best k."),
        Param(
            "method",
            STR,
            "cross-encoder (the configured reranker; 422 without one) or bi-encoder (the "
            "embedding model's cosine). Default: the reranker when one is configured.",
        ),
        INSTRUCTION,
        TRUNCATE,
    ),
    example={"query": "capital of France", "passages": ["Berlin", "Paris"]},
    response={
        "results": [{"text": "Paris", "score": 0.8, "index": 1}],
        "query": "capital of France",
        "backend": "torch",
        "device": "cpu",
        "method": "cross-encoder",
        "model": "Qwen/Qwen3-Reranker-0.6B",
        "processing_time": 0.01,
        "usage": {"prompt_tokens": 9, "total_tokens": 9},
    },
)

DIALECT = Dialect(
    "native",
    error_body,
    (
        route("POST", "/api/v1/embed", embed, EMBED),
        route("POST", "/api/v1/embed/", embed, EMBED),
        route("POST", "/api/v1/rerank", rerank, RERANK),
        route("POST", "/api/v1/rerank/", rerank, RERANK),
    ),
)
