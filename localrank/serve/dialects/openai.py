"""OpenAI `/v1/embeddings` (and `/embeddings`, which also speaks the kagent shape), and the model
list `GET /v1/models` (`/v1/models/{id}`) that OpenAI-style clients read to list or validate
models."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import numpy as np
from aiohttp import web

from localrank.declare import Choices, Len, OneOf, Rule, arg
from localrank.engine.types import ModelInfo
from localrank.errors import NotFound
from localrank.serve.api import Dialect, Operation, route
from localrank.serve.dialects.listing import ModelFacts, model_facts
from localrank.serve.dialects.shared import (
    EMBEDDING,
    MINILM,
    VEC,
    Dimensions,
    InputType,
    Instruction,
    Model,
    Texts,
    TokenIds,
    Truncate,
    check_requested_model,
    instruction_for_queries,
    query_mode,
    serves,
    unknown_model,
)
from localrank.serve.state import model_service

# A string, strings, token ids or lists of token ids (the served tokenizer's).
Input = str | Texts | TokenIds | Annotated[list[TokenIds], Len(1)]


@dataclass(frozen=True, kw_only=True)
class EmbeddingsRequest:
    """OpenAI's body; or kagent's `{texts, model}` (when there is no `input`)."""

    model: Model | None = None
    input: Input | None = arg("A string, strings, token ids or lists of token ids.", default=None)
    texts: Texts | None = arg(
        "kagent shape (answered as {embeddings, model, dimensions}).", default=None
    )
    encoding_format: Annotated[str, Choices(("float", "base64"))] = arg(
        "float or base64 (little-endian f32).", default="float"
    )
    dimensions: Dimensions | None = None
    input_type: InputType | None = None
    instruction: Instruction | None = None
    truncate: Truncate = True
    user: str | None = arg("Ignored.", default=None, unused=True)
    RULES: ClassVar[tuple[Rule, ...]] = (
        OneOf(("input", "texts"), message="'input' is required"),
        instruction_for_queries("input_type"),
    )


@dataclass(frozen=True, kw_only=True)
class TextQuery:
    text: str = arg("The text to embed.", where="query")


def _inputs(raw: Any) -> list[str] | list[list[int]]:
    if isinstance(raw, str):
        return [raw]
    if raw and all(isinstance(t, int) for t in raw):
        return [raw]  # one input given as token ids
    return list(raw)


def _encode(vector: np.ndarray, fmt: str) -> list[float] | str:
    if fmt == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


async def embeddings(request: web.Request, req: EmbeddingsRequest) -> web.Response:
    svc = model_service(request)
    check_requested_model(req.model, svc.info)
    query, instruction = query_mode(req.input_type, req.instruction)
    if req.input is None:
        assert req.texts is not None  # the OneOf rule
        return await _kagent(request, req.texts, query, instruction, req.dimensions)
    result = await svc.embed(
        _inputs(req.input),
        query=query,
        instruction=instruction,
        dimensions=req.dimensions,
        truncate=req.truncate,
    )
    return web.json_response(
        {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": _encode(v, req.encoding_format)}
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


async def _kagent(
    request: web.Request,
    texts: list[str],
    query: bool,
    instruction: str | None,
    dimensions: int | None,
) -> web.Response:
    svc = model_service(request)
    result = await svc.embed(texts, query=query, instruction=instruction, dimensions=dimensions)
    return web.json_response(
        {
            "embeddings": result.vectors.tolist(),
            "model": svc.info.display_name,
            "dimensions": int(result.vectors.shape[1]),
        }
    )


async def embeddings_get(request: web.Request, req: TextQuery) -> web.Response:
    return await _kagent(request, [req.text], False, None, None)


@dataclass(frozen=True, kw_only=True)
class ModelPath:
    model: str = arg("Any name the served model answers to.", where="path")


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
    svc = model_service(request)
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


async def model(request: web.Request, req: ModelPath) -> web.Response:
    info = model_service(request).info
    name = req.model
    if not serves(info, name):
        raise NotFound(unknown_model(name, info), param="model")
    return web.json_response(_model_object(name, info, await model_facts(info)))


def error_body(status: int, message: str, code: str, param: str | None) -> dict[str, Any]:
    kind = "invalid_request_error" if status < 500 else "server_error"
    if status == 429:
        kind = "rate_limit_exceeded"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


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
                "Document mode unless input_type says query. The official SDK asks for base64. "
                "A body with `texts` and no `input` answers kagent's shape.",
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
                response=KAGENT,
            ),
        ),
    ),
)
