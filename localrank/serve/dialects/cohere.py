"""Cohere and Jina: rerank (`POST /v1/rerank`, `POST /v2/rerank`) and Cohere's embed
(`POST /v1/embed`, `POST /v2/embed`).

One rerank shape answers both: Cohere's `results`/`meta` (what `cohere.ClientV2.rerank` parses)
plus Jina's `model` and `usage`. `document` is left out entirely unless `return_documents` is
true: strict clients reject `"document": null`. Embed answers Cohere's `embeddings_by_type`
shape (`{"embeddings": {"float": [...]}}`, what v2 and Continue's Cohere provider read), or on
v1 without `embedding_types` the older `embeddings_floats` (`{"embeddings": [[...]]}`).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

from aiohttp import web

from localrank.declare import Choices, Len, OneOf, Rule, Schema, arg
from localrank.serve.api import Dialect, Operation, route
from localrank.serve.dialects.shared import (
    MINILM,
    VEC,
    Dimensions,
    InputType,
    Instruction,
    Model,
    PositiveInt,
    Query,
    Texts,
    Truncate,
    check_requested_model,
    instruction_for_queries,
    query_mode,
)
from localrank.serve.state import model_service


class DocumentsHaveText(Rule):
    """Without rank_fields, an object document is ranked on its `text`, so it needs one."""

    def schema(self, ctx: Any) -> Schema:
        text_object = {
            "type": "object",
            "required": ["text"],
            "properties": {"text": {"type": "string"}},
        }
        return {
            "if": {"required": ["rank_fields"], "properties": {"rank_fields": {"type": "array"}}},
            "else": {
                "properties": {"documents": {"items": {"anyOf": [{"type": "string"}, text_object]}}}
            },
        }

    def check(self, value: Any) -> tuple[str, str] | None:
        if value.rank_fields is not None:
            return None
        for i, doc in enumerate(value.documents):
            if isinstance(doc, dict) and not isinstance(doc.get("text"), str):
                return (
                    "documents",
                    f"documents[{i}] must be a string or an object with a string 'text'",
                )
        return None


@dataclass(frozen=True, kw_only=True)
class RerankRequest:
    model: Model | None = arg(
        "The served model's name, or the configured reranker's; an unknown name is a 404.",
        default=None,
    )
    query: Query
    documents: Annotated[list[str | dict[str, Any]], Len(1)] = arg(
        "Strings, or objects with a text field (or the fields rank_fields names)."
    )
    top_n: PositiveInt | None = arg("Return only the best n.", default=None)
    top_k: PositiveInt | None = arg("Jina's name for top_n.", default=None)
    return_documents: bool = arg(
        "Include each document (default false: the key is omitted).", default=False
    )
    max_tokens_per_doc: PositiveInt | None = arg(
        "Cut each document to this many tokens first.", default=None
    )
    rank_fields: (
        Annotated[list[str], Len(1, message="rank_fields must be a non-empty list of field names")]
        | None
    ) = arg(
        "Cohere v1: object fields to rank on, in order (a document without one is ranked on "
        "the others).",
        default=None,
    )
    instruction: Instruction | None = None
    truncate: Truncate = True
    RULES: ClassVar[tuple[Rule, ...]] = (DocumentsHaveText(),)


def document_texts(docs: list[Any], rank_fields: list[str] | None) -> list[str]:
    """The text to rank for each document: a string, an object's `text`, or (Cohere v1's
    `rank_fields`) the named fields of an object as `key: value` lines, in their order (a
    field the object lacks is left out; a value that is not a string is written as JSON)."""
    texts = []
    for doc in docs:
        if isinstance(doc, str):
            texts.append(doc)
        elif rank_fields:
            texts.append(
                "\n".join(
                    f"{k}: {doc[k] if isinstance(doc[k], str) else json.dumps(doc[k])}"
                    for k in rank_fields
                    if k in doc
                )
            )
        else:
            texts.append(doc["text"])
    return texts


async def rerank(request: web.Request, req: RerankRequest) -> web.Response:
    svc = model_service(request)
    if not svc.is_reranker_name(req.model):
        check_requested_model(req.model, svc.info)
    docs = req.documents
    texts = document_texts(docs, req.rank_fields)
    top_n = min(req.top_n or req.top_k or len(texts), len(texts))
    ranked = texts
    if req.max_tokens_per_doc is not None and texts:
        ranked = await svc.cut_to_tokens(texts, req.max_tokens_per_doc)
    scored = await svc.rerank(req.query, ranked, instruction=req.instruction, truncate=req.truncate)
    scores, tokens = scored.scores, scored.tokens
    order = sorted(range(len(texts)), key=lambda i: -scores[i])[:top_n]
    results = []
    for i in order:
        item: dict[str, Any] = {"index": i, "relevance_score": float(scores[i])}
        if req.return_documents:
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


@dataclass(frozen=True)
class TextContent:
    type: Annotated[
        str, Choices(("text",), message="{name} must be text (this model embeds text)")
    ] = arg("text: this model embeds text only.")
    text: str = arg("The text.")


@dataclass(frozen=True)
class EmbedInput:
    content: list[TextContent] = arg("Text content, joined into one input.")


@dataclass(frozen=True, kw_only=True)
class EmbedRequest:
    model: Model | None = None
    texts: Texts | None = arg("Texts to embed.", default=None)
    inputs: Annotated[list[EmbedInput], Len(1)] | None = arg(
        "v2: inputs of text content (instead of texts).", default=None
    )
    input_type: InputType | None = arg(
        "search_document (default here) or search_query; classification, clustering.",
        default=None,
    )
    embedding_types: (
        Annotated[
            list[
                Annotated[
                    str,
                    Choices(("float",), message="embedding_types supports only ['float'] here"),
                ]
            ],
            Len(1, message="embedding_types supports only ['float'] here"),
        ]
        | None
    ) = arg("['float'] (the only type served).", default=None)
    truncate: Annotated[
        str,
        Choices(
            ("END", "NONE"),
            fold_case=True,
            message="truncate must be END or NONE (START is not supported)",
        ),
    ] = arg("END (default) or NONE (413 for inputs over the token limit).", default="END")
    output_dimension: Dimensions | None = None
    max_tokens: PositiveInt | None = arg("Cut each text to this many tokens first.", default=None)
    instruction: Instruction | None = None
    RULES: ClassVar[tuple[Rule, ...]] = (
        OneOf(("texts", "inputs"), message="'texts' is required"),
        instruction_for_queries("input_type"),
    )


def _embed_texts(req: EmbedRequest) -> list[str]:
    """`texts`, or v2's `inputs` of text content (`[{"content": [{"type": "text", ...}]}]`)."""
    if req.texts is not None:
        return req.texts
    return ["".join(c.text for c in item.content) for item in req.inputs or []]


async def embed(request: web.Request, req: EmbedRequest) -> web.Response:
    svc = model_service(request)
    check_requested_model(req.model, svc.info)
    texts = _embed_texts(req)
    query, instruction = query_mode(req.input_type, req.instruction)
    if req.max_tokens is not None and texts:
        texts = await svc.cut_to_tokens(texts, req.max_tokens)
    result = await svc.embed(
        texts,
        query=query,
        instruction=instruction,
        dimensions=req.output_dimension,
        # Cohere's truncate: END (default) cuts the end, NONE refuses long inputs (413).
        truncate=req.truncate.upper() == "END",
    )
    vectors = result.vectors.tolist()
    by_type = req.embedding_types is not None or request.path.startswith("/v2/")
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
                example=_EXAMPLE,
                response=_RESPONSE,
            ),
        ),
    ),
)
