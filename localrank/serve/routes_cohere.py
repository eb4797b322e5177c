"""Cohere and Jina rerank: `POST /v1/rerank` and `POST /v2/rerank`.

One shape answers both: Cohere's `results`/`meta` (what `cohere.ClientV2.rerank` parses) plus
Jina's `model` and `usage`. `document` is left out entirely unless `return_documents` is true:
strict clients reject `"document": null`.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from aiohttp import web

from localrank.engine.tokenizer import TextTokenizer
from localrank.errors import InvalidInput
from localrank.serve.http import field, positive_int, read_json
from localrank.serve.options import check_model, query_mode, truncate_flag
from localrank.serve.state import service


def document_texts(docs: list[Any], rank_fields: list[str] | None) -> list[str]:
    """The text to rank for each document: a string, an object's `text`, or (Cohere v1's
    `rank_fields`) the named fields of an object as `key: value` lines."""
    texts = []
    for i, doc in enumerate(docs):
        if isinstance(doc, str):
            texts.append(doc)
        elif isinstance(doc, dict) and rank_fields:
            missing = [k for k in rank_fields if not isinstance(doc.get(k), str)]
            if missing:
                raise InvalidInput(f"documents[{i}] has no string field {missing[0]!r} "
                                   "(named in rank_fields)", param="documents")
            texts.append("\n".join(f"{k}: {doc[k]}" for k in rank_fields))
        elif isinstance(doc, dict) and isinstance(doc.get("text"), str):
            texts.append(doc["text"])
        else:
            raise InvalidInput(f"documents[{i}] must be a string or an object with a string "
                               "'text'", param="documents")
    return texts


def _rank_fields(body: dict[str, Any]) -> list[str] | None:
    fields = field(body, "rank_fields", list)
    if fields is not None and (not fields or not all(isinstance(f, str) for f in fields)):
        raise InvalidInput("rank_fields must be a non-empty list of field names",
                           param="rank_fields")
    return fields


def cut_to_tokens(tokenizer: TextTokenizer, texts: list[str], limit: int) -> list[str]:
    """Each text cut after its first `limit` content tokens (Cohere's `max_tokens_per_doc`)."""
    out = []
    for text in texts:
        offsets = tokenizer.offsets(text)
        out.append(text[: offsets[limit - 1][1]] if len(offsets) > limit else text)
    return out


def _top_n(body: dict[str, Any], count: int) -> int:
    name = "top_n" if body.get("top_n") is not None else "top_k"
    return min(positive_int(body, name) or count, count)


async def rerank(request: web.Request) -> web.Response:
    body = await read_json(request)
    svc = service(request)
    check_model(body, svc.info)
    query = field(body, "query", str, required=True)
    if not query.strip():
        raise InvalidInput("query must not be empty", param="query")
    docs = field(body, "documents", list, required=True)
    texts = document_texts(docs, _rank_fields(body))
    top_n = _top_n(body, len(texts))
    return_documents = field(body, "return_documents", bool, False)
    max_tokens = positive_int(body, "max_tokens_per_doc")
    _, instruction = query_mode(body, default_query=True)
    ranked = texts
    if max_tokens is not None and texts:
        ranked = await asyncio.to_thread(cut_to_tokens, svc.engine.tokenizer, texts, max_tokens)
    scores, tokens = await svc.rerank(query, ranked, instruction=instruction,
                                      truncate=truncate_flag(body))
    order = sorted(range(len(texts)), key=lambda i: -scores[i])[:top_n]
    results = []
    for i in order:
        item: dict[str, Any] = {"index": i, "relevance_score": float(scores[i])}
        if return_documents:
            item["document"] = docs[i] if isinstance(docs[i], dict) else {"text": docs[i]}
        results.append(item)
    version = "1" if request.path.startswith("/v1/") else "2"
    return web.json_response({
        "id": str(uuid.uuid4()),
        "results": results,
        "meta": {"api_version": {"version": version},
                 "billed_units": {"search_units": 1},
                 "tokens": {"input_tokens": tokens, "output_tokens": 0}},
        "model": svc.info.display_name,
        "usage": {"total_tokens": tokens},
    })


routes = [
    web.post("/v1/rerank", rerank),
    web.post("/v2/rerank", rerank),
]
