"""Cohere and Jina: rerank (`POST /v1/rerank`, `POST /v2/rerank`) and Cohere's embed
(`POST /v1/embed`, `POST /v2/embed`).

One rerank shape answers both: Cohere's `results`/`meta` (what `cohere.ClientV2.rerank` parses)
plus Jina's `model` and `usage`. `document` is left out entirely unless `return_documents` is
true: strict clients reject `"document": null`. Embed answers Cohere's `embeddings_by_type`
shape (`{"embeddings": {"float": [...]}}`, what v2 and Continue's Cohere provider read), or on
v1 without `embedding_types` the older `embeddings_floats` (`{"embeddings": [[...]]}`).
"""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from localrank.errors import InvalidInput
from localrank.serve.api import BOOL, INT, OBJ, STR, Dialect, Operation, Param, arr, one_of, route
from localrank.serve.dialects.fields import INSTRUCTION, MINILM, MODEL, QUERY, VEC
from localrank.serve.parsing import (
    check_requested_model,
    field,
    positive_int,
    query_mode,
    read_body,
    truncate_flag,
)
from localrank.serve.state import embedding


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
                raise InvalidInput(
                    f"documents[{i}] has no string field {missing[0]!r} (named in rank_fields)",
                    param="documents",
                )
            texts.append("\n".join(f"{k}: {doc[k]}" for k in rank_fields))
        elif isinstance(doc, dict) and isinstance(doc.get("text"), str):
            texts.append(doc["text"])
        else:
            raise InvalidInput(
                f"documents[{i}] must be a string or an object with a string 'text'",
                param="documents",
            )
    return texts


def _rank_fields(body: dict[str, Any]) -> list[str] | None:
    fields = field(body, "rank_fields", list)
    if fields is not None and (not fields or not all(isinstance(f, str) for f in fields)):
        raise InvalidInput(
            "rank_fields must be a non-empty list of field names", param="rank_fields"
        )
    return fields


def _top_n(body: dict[str, Any], count: int) -> int:
    name = "top_n" if body.get("top_n") is not None else "top_k"
    return min(positive_int(body, name) or count, count)


async def rerank(request: web.Request) -> web.Response:
    body = await read_body(request)
    svc = embedding(request)
    if not svc.is_reranker_name(body.get("model")):
        check_requested_model(body, svc.info)
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
        ranked = await svc.cut_to_tokens(texts, max_tokens)
    scored = await svc.score(query, ranked, instruction=instruction, truncate=truncate_flag(body))
    scores, tokens = scored.scores, scored.tokens
    order = sorted(range(len(texts)), key=lambda i: -scores[i])[:top_n]
    results = []
    for i in order:
        item: dict[str, Any] = {"index": i, "relevance_score": float(scores[i])}
        if return_documents:
            item["document"] = docs[i] if isinstance(docs[i], dict) else {"text": docs[i]}
        results.append(item)
    version = "1" if request.path.startswith("/v1/") else "2"
    return web.json_response(
        {
            "id": str(uuid.uuid4()),
            "results": results,
            "meta": {
                "api_version": {"version": version},
                "billed_units": {"search_units": 1},
                "tokens": {"input_tokens": tokens, "output_tokens": 0},
            },
            "model": scored.model,
            "usage": {"total_tokens": tokens},
        }
    )


def _embed_texts(body: dict[str, Any]) -> list[str]:
    """`texts`, or v2's `inputs` of text content (`[{"content": [{"type": "text", ...}]}]`)."""
    if body.get("texts") is not None or body.get("inputs") is None:
        texts = field(body, "texts", list, required=True)
        if not all(isinstance(t, str) for t in texts):
            raise InvalidInput("'texts' must be a list of strings", param="texts")
        return texts
    out = []
    for i, item in enumerate(field(body, "inputs", list)):
        content = item.get("content") if isinstance(item, dict) else None
        if not isinstance(content, list) or not all(
            isinstance(c, dict) and c.get("type") == "text" and isinstance(c.get("text"), str)
            for c in content
        ):
            raise InvalidInput(
                f"inputs[{i}] must hold text content only (this model embeds text)",
                param="inputs",
            )
        out.append("".join(c["text"] for c in content))
    return out


def _embedding_types(body: dict[str, Any]) -> list[str] | None:
    types = field(body, "embedding_types", list)
    if types is not None and (not types or any(t != "float" for t in types)):
        raise InvalidInput("embedding_types supports only ['float'] here", param="embedding_types")
    return types


def _truncate(body: dict[str, Any]) -> bool:
    """Cohere's truncate: END (default) cuts the end, NONE refuses long inputs (413)."""
    value = field(body, "truncate", str, "END").upper()
    if value not in ("END", "NONE"):
        raise InvalidInput(
            "truncate must be END or NONE (START is not supported)", param="truncate"
        )
    return value == "END"


async def embed(request: web.Request) -> web.Response:
    body = await read_body(request)
    svc = embedding(request)
    check_requested_model(body, svc.info)
    texts = _embed_texts(body)
    types = _embedding_types(body)
    truncate = _truncate(body)
    query, instruction = query_mode(body)
    max_tokens = positive_int(body, "max_tokens")
    if max_tokens is not None and texts:
        texts = await svc.cut_to_tokens(texts, max_tokens)
    result = await svc.embed(
        texts,
        query=query,
        instruction=instruction,
        dimensions=field(body, "output_dimension", int),
        truncate=truncate,
    )
    vectors = result.vectors.tolist()
    by_type = types is not None or request.path.startswith("/v2/")
    version = "2" if request.path.startswith("/v2/") else "1"
    return web.json_response(
        {
            "id": str(uuid.uuid4()),
            "embeddings": {"float": vectors} if by_type else vectors,
            "texts": texts,
            "meta": {
                "api_version": {"version": version},
                "billed_units": {"input_tokens": result.prompt_tokens},
            },
            "response_type": "embeddings_by_type" if by_type else "embeddings_floats",
        }
    )


def error_body(status: int, message: str, code: str, param: str | None) -> dict[str, Any]:
    return {"message": message}


_BODY = (
    MODEL,
    QUERY,
    Param(
        "documents", arr(one_of(STR, OBJ)), "Strings, or objects with a text field.", required=True
    ),
    Param("top_n", INT, "Return only the best n (top_k is accepted too)."),
    Param("return_documents", BOOL, "Include each document (default false: the key is omitted)."),
    Param("max_tokens_per_doc", INT, "Cut each document to this many tokens first."),
    Param("rank_fields", arr(STR), "Cohere v1: object fields to rank on, in order."),
    INSTRUCTION,
)
_EXAMPLE = {
    "model": "all-minilm-l6-v2",
    "query": "capital of France",
    "documents": ["Berlin is in Germany.", "Paris is the capital of France."],
    "top_n": 2,
}
_RESPONSE = {
    "id": "3f0c...",
    "results": [{"index": 1, "relevance_score": 0.83}, {"index": 0, "relevance_score": 0.51}],
    "meta": {
        "api_version": {"version": "2"},
        "billed_units": {"search_units": 1},
        "tokens": {"input_tokens": 18, "output_tokens": 0},
    },
    "model": MINILM,
    "usage": {"total_tokens": 18},
}

_EMBED_BODY = (
    MODEL,
    Param("texts", arr(STR), "Texts to embed.", required=True),
    Param("inputs", arr(OBJ), "v2: inputs of text content (instead of texts)."),
    Param(
        "input_type",
        STR,
        "search_document (default here) or search_query; classification, clustering.",
    ),
    Param("embedding_types", arr(STR), "['float'] (the only type served)."),
    Param("truncate", STR, "END (default) or NONE (413 for inputs over the token limit)."),
    Param("output_dimension", INT, "Matryoshka size: the first n dimensions, re-normalised."),
    Param("max_tokens", INT, "Cut each text to this many tokens first."),
    INSTRUCTION,
)
_EMBED_EXAMPLE = {
    "model": "all-minilm-l6-v2",
    "texts": ["hello world"],
    "input_type": "search_document",
    "embedding_types": ["float"],
}
_EMBED_RESPONSE = {
    "id": "5d2e...",
    "embeddings": {"float": [VEC]},
    "texts": ["hello world"],
    "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": 4}},
    "response_type": "embeddings_by_type",
}

DIALECT = Dialect(
    "cohere",
    error_body,
    (
        route(
            "POST",
            "/v1/embed",
            embed,
            Operation(
                "Cohere v1 embed: embeddings by type with embedding_types, else a plain list.",
                body=_EMBED_BODY,
                example=_EMBED_EXAMPLE,
                response=_EMBED_RESPONSE,
            ),
        ),
        route(
            "POST",
            "/v2/embed",
            embed,
            Operation(
                "Cohere v2 embed (what cohere.ClientV2.embed and Continue's Cohere provider call).",
                body=_EMBED_BODY,
                example=_EMBED_EXAMPLE,
                response=_EMBED_RESPONSE,
            ),
        ),
        route(
            "POST",
            "/v1/rerank",
            rerank,
            Operation(
                "Cohere v1 / Jina rerank.",
                "relevance_score is the instructed query's cosine to each document, mapped to "
                "[0, 1].",
                body=_BODY,
                example=_EXAMPLE,
                response=_RESPONSE,
            ),
        ),
        route(
            "POST",
            "/v2/rerank",
            rerank,
            Operation(
                "Cohere v2 rerank (what cohere.ClientV2.rerank calls).",
                body=_BODY,
                example=_EXAMPLE,
                response=_RESPONSE,
            ),
        ),
    ),
)
