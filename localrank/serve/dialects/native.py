"""The native API, in the shapes of the embed-rerank service localrank replaces, so its clients
work unchanged (trailing-slash forms included)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

from aiohttp import web

from localrank.declare import Choices, Len, OneOf, Rule, arg
from localrank.serve.api import Dialect, Operation, route
from localrank.serve.dialects.shared import (
    MINILM,
    VEC,
    Dimensions,
    InputType,
    Instruction,
    PositiveInt,
    Query,
    Texts,
    Truncate,
    instruction_for_queries,
    query_mode,
)
from localrank.serve.requests import RERANK_METHODS
from localrank.serve.state import model_service


@dataclass(frozen=True, kw_only=True)
class EmbedRequest:
    texts: Texts = arg("Texts to embed.")
    batch_size: PositiveInt | None = arg(
        "Accepted; the scheduler batches.", default=None, unused=True
    )
    normalize: bool = arg("Accepted; vectors are always unit length.", default=True, unused=True)
    input_type: InputType | None = None
    instruction: Instruction | None = None
    dimensions: Dimensions | None = None
    truncate: Truncate = True
    RULES: ClassVar[tuple[Rule, ...]] = (instruction_for_queries("input_type"),)


@dataclass(frozen=True)
class TextObject:
    """A document as an object: its `text` is what is ranked."""

    text: str = arg("The text to rank.")


def _method_message(value: str) -> str:
    if value == "cross-encoder":
        return "no reranker is configured"
    return f"method must be cross-encoder or bi-encoder, not {value!r}"


@dataclass(frozen=True, kw_only=True)
class RerankRequest:
    query: Query
    passages: Texts | None = arg("Texts to rank (or `documents`).", default=None)
    documents: Annotated[list[str | TextObject], Len(1)] | None = arg(
        "Same as passages: strings, or objects with a text.", default=None
    )
    top_k: PositiveInt | None = arg("Return only the best k.", default=None)
    method: Annotated[str, Choices(RERANK_METHODS, message=_method_message)] | None = arg(
        "cross-encoder (the configured reranker: only with one) or bi-encoder (the embedding "
        "model's cosine). Default: the reranker when one is configured.",
        default=None,
    )
    instruction: Instruction | None = None
    truncate: Truncate = True
    RULES: ClassVar[tuple[Rule, ...]] = (OneOf(("passages", "documents")),)


def _model_info(request: web.Request) -> dict[str, object]:
    info = model_service(request).info
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


async def embed(request: web.Request, req: EmbedRequest) -> web.Response:
    started = time.perf_counter()
    svc = model_service(request)
    # batch_size is accepted for compatibility (the scheduler batches); vectors are always
    # L2-normalised (the recipe's), whatever `normalize` says.
    query, instruction = query_mode(req.input_type, req.instruction)
    result = await svc.embed(
        req.texts,
        query=query,
        instruction=instruction,
        dimensions=req.dimensions,
        truncate=req.truncate,
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
                "texts": len(req.texts),
                "truncated_inputs": result.truncated,
            },
        }
    )


async def rerank(request: web.Request, req: RerankRequest) -> web.Response:
    started = time.perf_counter()
    svc = model_service(request)
    # `passages` (the embed-rerank name) or `documents`.
    docs = req.passages if req.passages is not None else req.documents or []
    texts = [d.text if isinstance(d, TextObject) else d for d in docs]
    top_k = req.top_k or len(texts)
    scored = await svc.rerank(
        req.query,
        texts,
        instruction=req.instruction,
        truncate=req.truncate,
        method=req.method,
    )
    scores, tokens = scored.scores, scored.tokens
    order = sorted(range(len(texts)), key=lambda i: -scores[i])[:top_k]
    return web.json_response(
        {
            "results": [{"text": texts[i], "score": float(scores[i]), "index": i} for i in order],
            "query": req.query,
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
