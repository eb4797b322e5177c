"""The native API, in the shapes of the embed-rerank service localrank replaces, so its clients
work unchanged (trailing-slash forms included)."""

from __future__ import annotations

import time

from aiohttp import web

from localrank.errors import InvalidInput
from localrank.serve.http import field, positive_int, read_json
from localrank.serve.options import query_mode, truncate_flag
from localrank.serve.state import service


def _model_info(request: web.Request) -> dict[str, object]:
    info = service(request).info
    return {"name": info.display_name, "model_id": info.model_id, "revision": info.revision,
            "dim": info.backend.dim, "pooling": info.backend.pooling, "dtype": info.backend.dtype,
            "max_tokens": info.backend.max_tokens, "fallback": info.fallback_reason is not None}


async def embed(request: web.Request) -> web.Response:
    started = time.perf_counter()
    body = await read_json(request)
    svc = service(request)
    texts = field(body, "texts", list, required=True)
    positive_int(body, "batch_size")  # accepted for compatibility: the scheduler batches
    field(body, "normalize", bool, True)  # vectors are always L2-normalised (the recipe's)
    query, instruction = query_mode(body)
    result = await svc.embed(texts, query=query, instruction=instruction,
                             dimensions=field(body, "dimensions", int),
                             truncate=truncate_flag(body))
    return web.json_response({
        "vectors": result.vectors.tolist(),
        "dim": int(result.vectors.shape[1]),
        "processing_time": time.perf_counter() - started,
        "device": svc.info.backend.device,
        "backend": svc.info.backend.backend,
        "normalized": True,
        "model_info": _model_info(request),
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens,
                  "texts": len(texts), "truncated_inputs": result.truncated},
    })


async def rerank(request: web.Request) -> web.Response:
    started = time.perf_counter()
    body = await read_json(request)
    svc = service(request)
    query = field(body, "query", str, required=True)
    docs = field(body, "passages", list) if "passages" in body else field(body, "documents",
                                                                          list, required=True)
    texts = [d["text"] if isinstance(d, dict) and isinstance(d.get("text"), str) else d
             for d in docs]
    top_k = positive_int(body, "top_k", len(texts))
    _, instruction = query_mode(body, default_query=True)
    if not query.strip():
        raise InvalidInput("query must not be empty", param="query")
    scores, tokens = await svc.rerank(query, texts, instruction=instruction,
                                      truncate=truncate_flag(body))
    order = sorted(range(len(texts)), key=lambda i: -scores[i])[:top_k]
    return web.json_response({
        "results": [{"text": texts[i], "score": float(scores[i]), "index": i} for i in order],
        "query": query,
        "backend": svc.info.backend.backend,
        "device": svc.info.backend.device,
        "method": "bi-encoder cosine (instructed query vs documents), mapped to [0, 1]",
        "processing_time": time.perf_counter() - started,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })


routes = [
    web.post("/api/v1/embed", embed),
    web.post("/api/v1/embed/", embed),
    web.post("/api/v1/rerank", rerank),
    web.post("/api/v1/rerank/", rerank),
]
