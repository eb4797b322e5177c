"""Hugging Face text-embeddings-inference: `POST /embed`, `/rerank`, `/similarity`,
`/tokenize`, `GET /info`, and `POST /`.

Shapes follow TEI's router (`router/src/http/types.rs`). localrank behaves like TEI started with
`--auto-truncate`: `truncate` defaults to true, and /info says so. TEI serves an embedding model
on `POST /` too, and that is where `huggingface_hub.InferenceClient(model=URL)` posts both
`feature_extraction` (`{"inputs": text}`) and `sentence_similarity` (`{"inputs":
{"source_sentence", "sentences"}}`): `POST /` answers each by the shape of its `inputs`.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from aiohttp import web

from localrank import __version__
from localrank.engine.core import check_inputs
from localrank.errors import BackendError, InvalidInput
from localrank.serve.api import BOOL, OBJ, STR, Dialect, Operation, Param, arr, one_of, route
from localrank.serve.dialects.fields import DIMENSIONS, INSTRUCTION, MINILM, QUERY, TRUNCATE, VEC
from localrank.serve.parsing import field, query_mode, read_body, truncate_flag
from localrank.serve.state import STATE_KEY, embedding


def tei_inputs(body: dict[str, Any], name: str = "inputs") -> list[str] | list[list[int]]:
    """TEI's `inputs`: one string, a list of strings, or token ids (one list or a list of them)."""
    raw = body.get(name)
    if raw is None:
        raise InvalidInput(f"{name!r} is required", param=name)
    if isinstance(raw, str):
        return [raw]
    if (
        isinstance(raw, list)
        and raw
        and all(isinstance(t, int) and not isinstance(t, bool) for t in raw)
    ):
        return [raw]
    if isinstance(raw, list):
        return raw
    raise InvalidInput(f"{name!r} must be a string or a list of strings", param=name)


def _check_direction(body: dict[str, Any]) -> None:
    direction = field(body, "truncation_direction", str, "Right")
    if direction.lower() != "right":
        raise InvalidInput(
            "only truncation_direction Right is supported", param="truncation_direction"
        )


async def embed(request: web.Request) -> web.Response:
    """TEI `/embed` -> `[[float, ...], ...]`. Vectors are always unit length (the recipe's)."""
    return await _embed(request, await read_body(request))


async def _embed(request: web.Request, body: dict[str, Any]) -> web.Response:
    svc = embedding(request)
    inputs = tei_inputs(body)
    field(body, "normalize", bool, True)
    _check_direction(body)
    query, instruction = query_mode(body)
    result = await svc.embed(
        inputs,
        query=query,
        instruction=instruction,
        dimensions=field(body, "dimensions", int),
        truncate=truncate_flag(body),
    )
    return web.json_response(result.vectors.tolist())


async def similarity(request: web.Request) -> web.Response:
    """TEI `/similarity` -> `[float, ...]`: the cosine of `source_sentence` to each of
    `sentences` (TEI's sentence-similarity task)."""
    return await _similarity(request, await read_body(request))


async def _similarity(request: web.Request, body: dict[str, Any]) -> web.Response:
    svc = embedding(request)
    inputs = field(body, "inputs", dict, required=True)
    source = field(inputs, "source_sentence", str, required=True)
    sentences = field(inputs, "sentences", list, required=True)
    if not sentences or not all(isinstance(t, str) for t in sentences):
        raise InvalidInput("'inputs.sentences' must be a non-empty list of strings", param="inputs")
    check_inputs([source, *sentences], max_inputs=svc.max_inputs, param="inputs")
    parameters = field(body, "parameters", dict, {})
    _check_direction(parameters)
    query, instruction = query_mode(parameters)
    result = await svc.embed(
        [source, *sentences],
        query=query,
        instruction=instruction,
        truncate=truncate_flag(parameters),
    )
    vectors = result.vectors
    return web.json_response((vectors[1:] @ vectors[0]).tolist())


async def root(request: web.Request) -> web.Response:
    """TEI's `POST /` for an embedding model: sentence similarity when `inputs` holds
    `source_sentence` and `sentences`, embeddings otherwise."""
    body = await read_body(request)
    if isinstance(body.get("inputs"), dict):
        return await _similarity(request, body)
    return await _embed(request, body)


async def rerank(request: web.Request) -> web.Response:
    """TEI `/rerank` -> `[{"index", "score", "text"?}]`, best first. `raw_scores` gives the
    cross-encoder's logit (or, without a reranker, the cosine in [-1, 1]) instead of the
    [0, 1] score."""
    body = await read_body(request)
    svc = embedding(request)
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
    scored = await svc.score(query, texts, instruction=instruction, truncate=truncate_flag(body))
    scores = scored.scores
    out = []
    for i in sorted(range(len(texts)), key=lambda i: -scores[i]):
        score = float(scored.raw[i]) if raw_scores else float(scores[i])
        item: dict[str, Any] = {"index": i, "score": score}
        if return_text:
            item["text"] = texts[i]
        out.append(item)
    return web.json_response(out)


async def tokenize(request: web.Request) -> web.Response:
    body = await read_body(request)
    svc = embedding(request)
    raw = tei_inputs(body)
    inputs = [t for t in raw if isinstance(t, str)]
    if len(inputs) != len(raw):
        raise InvalidInput("'inputs' must be a string or a list of strings", param="inputs")
    add_special = field(body, "add_special_tokens", bool, True)
    query, instruction = query_mode(body)
    tokens = await svc.tokens(
        inputs, add_special_tokens=add_special, query=query, instruction=instruction
    )
    return web.json_response([[asdict(t) for t in row] for row in tokens])


async def info(request: web.Request) -> web.Response:
    """TEI's /info fields, then localrank's own (backend, device, dim, rerank method...)."""
    svc = embedding(request)
    settings = request.app[STATE_KEY].settings
    model = svc.info
    backend = model.backend
    return web.json_response(
        {
            "model_id": model.display_name,
            "names": list(model.names),
            "model_sha": model.revision,
            "model_dtype": backend.dtype,
            "model_type": {"embedding": {"pooling": backend.pooling}},
            "max_concurrent_requests": settings.queue_size,
            "max_input_length": backend.max_tokens,
            "max_batch_tokens": svc.max_batch_tokens,
            "max_batch_requests": settings.max_batch_size,
            "max_client_batch_size": settings.max_inputs,
            "auto_truncate": True,
            "tokenization_workers": 1,
            "version": __version__,
            "sha": None,
            "docker_label": None,
            "backend": backend.backend,
            "device": backend.device,
            "dtype": backend.dtype,
            "dtype_reason": backend.dtype_reason,
            "threads": backend.threads,
            "dim": backend.dim,
            "rerank_method": svc.rerank_status()["rerank_method"],
            "reranker": svc.rerank_status(),
            "fallback": model.fallback_reason is not None,
            "fallback_reason": model.fallback_reason,
            "fingerprint": model.fingerprint,
        }
    )


_ERROR_TYPES = {
    400: "Validation",
    413: "Validation",
    422: "Validation",
    429: "Overloaded",
    503: "Unhealthy",
}


def error_body(status: int, message: str, code: str, param: str | None) -> dict[str, Any]:
    fallback = "Validation" if status < 500 else "Backend"
    return {"error": message, "error_type": _ERROR_TYPES.get(status, fallback)}


_EMBED_BODY = (
    Param("inputs", one_of(STR, arr(STR)), "Text or texts.", required=True),
    Param("normalize", BOOL, "Accepted; vectors are always unit length."),
    TRUNCATE,
    Param("truncation_direction", STR, "Right (the only one supported)."),
    Param("prompt_name", STR, "query or document."),
    DIMENSIONS,
    INSTRUCTION,
)
_SIMILARITY_INPUTS = {
    "type": "object",
    "properties": {"source_sentence": STR, "sentences": arr(STR)},
    "required": ["source_sentence", "sentences"],
}
_SIMILARITY_PARAMETERS = Param(
    "parameters", OBJ, "Similarity only: truncate, truncation_direction, prompt_name."
)

DIALECT = Dialect(
    "tei",
    error_body,
    statuses={BackendError: 424},
    error_statuses=(424,),
    routes=(
        route(
            "POST",
            "/embed",
            embed,
            Operation(
                "TEI embed: a list of vectors.",
                body=_EMBED_BODY,
                example={"inputs": ["hello world"]},
                response=[VEC],
            ),
        ),
        route(
            "POST",
            "/",
            root,
            Operation(
                "TEI's root for an embedding model (where huggingface_hub.InferenceClient posts): "
                "embed, or similarity when inputs is {source_sentence, sentences}.",
                body=(
                    Param(
                        "inputs",
                        one_of(STR, arr(STR), _SIMILARITY_INPUTS),
                        "Text or texts (embed), or {source_sentence, sentences} (similarity).",
                        required=True,
                    ),
                    *_EMBED_BODY[1:],
                    _SIMILARITY_PARAMETERS,
                ),
                example={"inputs": "hello world"},
                response=[VEC],
            ),
        ),
        route(
            "POST",
            "/similarity",
            similarity,
            Operation(
                "TEI sentence similarity: the cosine of source_sentence to each sentence.",
                body=(
                    Param(
                        "inputs",
                        _SIMILARITY_INPUTS,
                        "{source_sentence, sentences}.",
                        required=True,
                    ),
                    _SIMILARITY_PARAMETERS,
                ),
                example={
                    "inputs": {
                        "source_sentence": "What is Deep Learning?",
                        "sentences": ["What is Machine Learning?", "Bananas are yellow."],
                    }
                },
                response=[0.71, 0.08],
            ),
        ),
        route(
            "POST",
            "/rerank",
            rerank,
            Operation(
                "TEI rerank: [{index, score, text?}] best first.",
                body=(
                    QUERY,
                    Param("texts", arr(STR), "Texts to rank.", required=True),
                    Param("raw_scores", BOOL, "The cosine in [-1, 1] instead of [0, 1]."),
                    Param("return_text", BOOL, "Include each text."),
                    TRUNCATE,
                    INSTRUCTION,
                ),
                example={"query": "capital of France", "texts": ["Berlin", "Paris"]},
                response=[{"index": 1, "score": 0.8}, {"index": 0, "score": 0.55}],
            ),
        ),
        route(
            "POST",
            "/tokenize",
            tokenize,
            Operation(
                "TEI tokenize: per input, its tokens with character spans.",
                body=(
                    Param("inputs", one_of(STR, arr(STR)), "Text or texts.", required=True),
                    Param(
                        "add_special_tokens",
                        BOOL,
                        "Include the model's special tokens (default true).",
                    ),
                    Param("prompt_name", STR, "query formats a query."),
                ),
                example={"inputs": "hello world"},
                response=[
                    [
                        {"id": 101, "text": "[CLS]", "special": True, "start": None, "stop": None},
                        {"id": 7592, "text": "hello", "special": False, "start": 0, "stop": 5},
                    ]
                ],
            ),
        ),
        route(
            "GET",
            "/info",
            info,
            Operation(
                "TEI info, plus backend, device, dtype and why it was chosen (dtype_reason), "
                "dim, rerank_method, fallback and fingerprint.",
                response={
                    "model_id": MINILM,
                    "model_dtype": "float32",
                    "model_type": {"embedding": {"pooling": "mean"}},
                    "max_input_length": 256,
                    "backend": "torch",
                    "device": "cpu",
                    "dim": 384,
                    "rerank_method": "bi-encoder cosine ...",
                },
            ),
        ),
    ),
)
