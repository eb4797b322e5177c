"""OpenAI `/v1/embeddings` (and `/embeddings`, which also speaks the kagent shape)."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from aiohttp import web

from localrank.errors import InvalidInput
from localrank.serve.http import field, read_json
from localrank.serve.options import check_model, query_mode, truncate_flag
from localrank.serve.state import service


def _inputs(body: dict[str, Any]) -> list[str] | list[list[int]]:
    raw = body.get("input")
    if raw is None:
        raise InvalidInput("'input' is required", param="input")
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and raw and all(isinstance(t, int) and not isinstance(t, bool)
                                             for t in raw):
        return [raw]  # one input given as token ids
    if isinstance(raw, list):
        return raw
    raise InvalidInput("'input' must be a string, a list of strings, or token ids",
                       param="input")


def _encode(vector: np.ndarray, fmt: str) -> list[float] | str:
    if fmt == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


async def embeddings(request: web.Request) -> web.Response:
    body = await read_json(request)
    if "input" not in body and "texts" in body:
        return await _kagent(request, body)
    svc = service(request)
    check_model(body, svc.info)
    fmt = field(body, "encoding_format", str, "float")
    if fmt not in ("float", "base64"):
        raise InvalidInput("encoding_format must be float or base64", param="encoding_format")
    inputs = _inputs(body)
    query, instruction = query_mode(body)
    result = await svc.embed(inputs, query=query, instruction=instruction,
                             dimensions=field(body, "dimensions", int),
                             truncate=truncate_flag(body))
    return web.json_response({
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": _encode(v, fmt)}
                 for i, v in enumerate(result.vectors)],
        "model": svc.info.display_name,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens,
                  "truncated_inputs": result.truncated},
    })


async def _kagent(request: web.Request, body: dict[str, Any]) -> web.Response:
    svc = service(request)
    check_model(body, svc.info)
    texts = field(body, "texts", list, required=True)
    query, instruction = query_mode(body)
    result = await svc.embed(texts, query=query, instruction=instruction,
                             dimensions=field(body, "dimensions", int))
    return web.json_response({"embeddings": result.vectors.tolist(),
                              "model": svc.info.display_name,
                              "dimensions": int(result.vectors.shape[1])})


async def embeddings_get(request: web.Request) -> web.Response:
    text = request.query.get("text")
    if text is None:
        raise InvalidInput("GET /embeddings needs ?text=...", param="text")
    return await _kagent(request, {"texts": [text]})


routes = [
    web.post("/v1/embeddings", embeddings),
    web.post("/embeddings", embeddings),
    web.get("/embeddings", embeddings_get),
]
