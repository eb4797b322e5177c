"""Hugging Face text-embeddings-inference: `POST /embed`, `/rerank`, `/tokenize`, `GET /info`.

Shapes follow TEI's router (`router/src/http/types.rs`). localrank behaves like TEI started with
`--auto-truncate`: `truncate` defaults to true, and /info says so.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from localrank import __version__
from localrank.engine.core import Engine, check_inputs, cosine_of
from localrank.errors import InvalidInput
from localrank.serve.http import field, read_json
from localrank.serve.options import query_mode, truncate_flag
from localrank.serve.state import STATE_KEY, service

RERANK_METHOD = "bi-encoder cosine of the instructed query and each document, mapped to [0,1]"


def tei_inputs(body: dict[str, Any], name: str = "inputs") -> list[str] | list[list[int]]:
    """TEI's `inputs`: one string, a list of strings, or token ids (one list or a list of them)."""
    raw = body.get(name)
    if raw is None:
        raise InvalidInput(f"{name!r} is required", param=name)
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and raw and all(isinstance(t, int) and not isinstance(t, bool)
                                             for t in raw):
        return [raw]
    if isinstance(raw, list):
        return raw
    raise InvalidInput(f"{name!r} must be a string or a list of strings", param=name)


def _check_direction(body: dict[str, Any]) -> None:
    direction = field(body, "truncation_direction", str, "Right")
    if direction.lower() != "right":
        raise InvalidInput("only truncation_direction Right is supported",
                           param="truncation_direction")


async def embed(request: web.Request) -> web.Response:
    """TEI `/embed` -> `[[float, ...], ...]`. Vectors are always unit length (the recipe's)."""
    body = await read_json(request)
    svc = service(request)
    inputs = tei_inputs(body)
    field(body, "normalize", bool, True)
    _check_direction(body)
    query, instruction = query_mode(body)
    result = await svc.embed(inputs, query=query, instruction=instruction,
                             dimensions=field(body, "dimensions", int),
                             truncate=truncate_flag(body))
    return web.json_response(result.vectors.tolist())


async def rerank(request: web.Request) -> web.Response:
    """TEI `/rerank` -> `[{"index", "score", "text"?}]`, best first. `raw_scores` gives the
    cosine itself (in [-1, 1]) instead of the [0, 1] score."""
    body = await read_json(request)
    svc = service(request)
    query = field(body, "query", str, required=True)
    if not query.strip():
        raise InvalidInput("query must not be empty", param="query")
    texts = field(body, "texts", list, required=True)
    check_inputs(texts, max_inputs=svc.max_inputs, param="texts")
    if not all(isinstance(t, str) for t in texts):
        raise InvalidInput("'texts' must be a list of strings", param="texts")
    raw_scores = field(body, "raw_scores", bool, False)
    return_text = field(body, "return_text", bool, False)
    _check_direction(body)
    _, instruction = query_mode(body, default_query=True)
    scores, _ = await svc.rerank(query, texts, instruction=instruction,
                                 truncate=truncate_flag(body))
    out = []
    for i in sorted(range(len(texts)), key=lambda i: -scores[i]):
        score = cosine_of(float(scores[i])) if raw_scores else float(scores[i])
        item: dict[str, Any] = {"index": i, "score": score}
        if return_text:
            item["text"] = texts[i]
        out.append(item)
    return web.json_response(out)


def tokens_of(engine: Engine, text: str, add_special_tokens: bool) -> list[dict[str, Any]]:
    """TEI's SimpleToken list: content tokens carry their character span; special tokens (the
    ones the recipe wraps each input with) have `start`/`stop` null."""
    tok = engine.tokenizer
    enc = tok.raw.encode(text, add_special_tokens=False)
    content = [{"id": i, "text": text[a:b], "special": False, "start": a, "stop": b}
               for i, (a, b) in zip(enc.ids, enc.offsets, strict=True)]
    if not add_special_tokens:
        return content

    def special(ids: list[int]) -> list[dict[str, Any]]:
        return [{"id": i, "text": tok.raw.id_to_token(i) or "", "special": True,
                 "start": None, "stop": None} for i in ids]

    return [*special(tok.prefix), *content, *special(tok.suffix)]


async def tokenize(request: web.Request) -> web.Response:
    body = await read_json(request)
    svc = service(request)
    raw = tei_inputs(body)
    inputs = [t for t in raw if isinstance(t, str)]
    if len(inputs) != len(raw):
        raise InvalidInput("'inputs' must be a string or a list of strings", param="inputs")
    check_inputs(inputs, max_inputs=svc.max_inputs, param="inputs")
    add_special = field(body, "add_special_tokens", bool, True)
    query, instruction = query_mode(body)
    texts = [svc.engine.format_query(t, instruction) if query else t for t in inputs]
    engine = svc.engine
    out = await asyncio.to_thread(lambda: [tokens_of(engine, t, add_special) for t in texts])
    return web.json_response(out)


async def info(request: web.Request) -> web.Response:
    """TEI's /info fields, then localrank's own (backend, device, dim, rerank method...)."""
    svc = service(request)
    settings = request.app[STATE_KEY].settings
    model = svc.info
    backend = model.backend
    return web.json_response({
        "model_id": model.display_name,
        "model_sha": model.revision,
        "model_dtype": backend.dtype,
        "model_type": {"embedding": {"pooling": backend.pooling}},
        "max_concurrent_requests": settings.queue_size,
        "max_input_length": backend.max_tokens,
        "max_batch_tokens": svc.engine.max_batch_tokens,
        "max_batch_requests": settings.max_batch_size,
        "max_client_batch_size": settings.max_inputs,
        "auto_truncate": True,
        "tokenization_workers": 1,
        "version": __version__,
        "sha": None,
        "docker_label": None,
        "backend": backend.backend,
        "device": backend.device,
        "dim": backend.dim,
        "rerank_method": RERANK_METHOD,
        "fallback": model.fallback_reason is not None,
        "fallback_reason": model.fallback_reason,
        "fingerprint": model.fingerprint,
    })


routes = [
    web.post("/embed", embed),
    web.post("/rerank", rerank),
    web.post("/tokenize", tokenize),
    web.get("/info", info),
]
