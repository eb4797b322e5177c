"""Hugging Face text-embeddings-inference: `POST /embed`, `/rerank`, `/similarity`,
`/tokenize`, `GET /info`, and `POST /`.

Shapes follow TEI's router (`router/src/http/types.rs`). localrank behaves like TEI started with
`--auto-truncate`: `truncate` defaults to true, and /info says so. TEI serves an embedding model
on `POST /` too, and that is where `huggingface_hub.InferenceClient(model=URL)` posts both
`feature_extraction` (`{"inputs": text}`) and `sentence_similarity` (`{"inputs":
{"source_sentence", "sentences"}}`): `POST /` answers each by the shape of its `inputs`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Annotated, Any, ClassVar

from aiohttp import web

from localrank import __version__
from localrank.declare import Len, Rule, arg
from localrank.engine.core import check_inputs
from localrank.errors import BackendError
from localrank.serve.api import Dialect, Operation, route
from localrank.serve.dialects.shared import (
    MINILM,
    VEC,
    Dimensions,
    Direction,
    Instruction,
    PromptName,
    Query,
    Texts,
    TokenIds,
    Truncate,
    instruction_for_queries,
    query_mode,
)
from localrank.serve.state import STATE_KEY, model_service

# TEI's `inputs`: one string, a list of strings, or token ids (one list or a list of them).
Inputs = str | Texts | TokenIds | Annotated[list[TokenIds], Len(1)]


@dataclass(frozen=True, kw_only=True)
class EmbedRequest:
    inputs: Inputs = arg("Text or texts (or token ids).")
    normalize: bool = arg("Accepted; vectors are always unit length.", default=True, unused=True)
    truncate: Truncate = True
    truncation_direction: Direction = arg(default="Right", unused=True)
    prompt_name: PromptName | None = None
    dimensions: Dimensions | None = None
    instruction: Instruction | None = None
    RULES: ClassVar[tuple[Rule, ...]] = (instruction_for_queries("prompt_name"),)


@dataclass(frozen=True)
class SimilarityInputs:
    source_sentence: str = arg("The sentence the others are compared to.")
    sentences: Texts = arg("The sentences to compare.")


@dataclass(frozen=True, kw_only=True)
class SimilarityParameters:
    truncate: Truncate = True
    truncation_direction: Direction = arg(default="Right", unused=True)
    prompt_name: PromptName | None = None


@dataclass(frozen=True, kw_only=True)
class SimilarityRequest:
    inputs: SimilarityInputs = arg("{source_sentence, sentences}.")
    parameters: SimilarityParameters | None = arg(
        "truncate, truncation_direction, prompt_name.", default=None
    )


@dataclass(frozen=True, kw_only=True)
class RootRequest:
    """TEI's `POST /`: an embed body, or a similarity one (inputs {source_sentence,
    sentences}, then `parameters`)."""

    inputs: Inputs | SimilarityInputs = arg(
        "Text or texts (embed), or {source_sentence, sentences} (similarity)."
    )
    normalize: bool = arg("Accepted; vectors are always unit length.", default=True, unused=True)
    truncate: Truncate = True
    truncation_direction: Direction = arg(default="Right", unused=True)
    prompt_name: PromptName | None = None
    dimensions: Dimensions | None = None
    instruction: Instruction | None = None
    parameters: SimilarityParameters | None = arg(
        "Similarity only: truncate, truncation_direction, prompt_name.", default=None
    )
    RULES: ClassVar[tuple[Rule, ...]] = (instruction_for_queries("prompt_name"),)


@dataclass(frozen=True, kw_only=True)
class RerankRequest:
    query: Query
    texts: Texts = arg("Texts to rank.")
    raw_scores: bool = arg(
        "The cross-encoder's logit (without a reranker: the cosine in [-1, 1]) instead of the "
        "[0, 1] score.",
        default=False,
    )
    return_text: bool = arg("Include each text.", default=False)
    truncate: Truncate = True
    truncation_direction: Direction = arg(default="Right", unused=True)
    instruction: Instruction | None = None


@dataclass(frozen=True, kw_only=True)
class TokenizeRequest:
    inputs: str | Texts = arg("Text or texts.")
    add_special_tokens: bool = arg("Include the model's special tokens.", default=True)
    prompt_name: PromptName | None = arg("query formats a query.", default=None)
    instruction: Instruction | None = None
    RULES: ClassVar[tuple[Rule, ...]] = (instruction_for_queries("prompt_name"),)


def _list(inputs: Any) -> list[Any]:
    if isinstance(inputs, str):
        return [inputs]
    if inputs and all(isinstance(t, int) for t in inputs):
        return [inputs]  # one input as token ids
    return list(inputs)


async def embed(request: web.Request, req: EmbedRequest) -> web.Response:
    """TEI `/embed` -> `[[float, ...], ...]`. Vectors are always unit length (the recipe's)."""
    return await _embed(request, req.inputs, req)


async def _embed(
    request: web.Request, inputs: Any, req: EmbedRequest | RootRequest
) -> web.Response:
    svc = model_service(request)
    query, instruction = query_mode(req.prompt_name, req.instruction)
    result = await svc.embed(
        _list(inputs),
        query=query,
        instruction=instruction,
        dimensions=req.dimensions,
        truncate=req.truncate,
    )
    return web.json_response(result.vectors.tolist())


async def similarity(request: web.Request, req: SimilarityRequest) -> web.Response:
    """TEI `/similarity` -> `[float, ...]`: the cosine of `source_sentence` to each of
    `sentences` (TEI's sentence-similarity task)."""
    return await _similarity(request, req.inputs, req.parameters or SimilarityParameters())


async def _similarity(
    request: web.Request, inputs: SimilarityInputs, parameters: SimilarityParameters
) -> web.Response:
    svc = model_service(request)
    texts = [inputs.source_sentence, *inputs.sentences]
    check_inputs(texts, max_inputs=svc.max_inputs, param="inputs")
    query, instruction = query_mode(parameters.prompt_name, None)
    result = await svc.embed(
        texts, query=query, instruction=instruction, truncate=parameters.truncate
    )
    vectors = result.vectors
    return web.json_response((vectors[1:] @ vectors[0]).tolist())


async def root(request: web.Request, req: RootRequest) -> web.Response:
    """TEI's `POST /` for an embedding model: sentence similarity when `inputs` holds
    `source_sentence` and `sentences`, embeddings otherwise."""
    if isinstance(req.inputs, SimilarityInputs):
        return await _similarity(request, req.inputs, req.parameters or SimilarityParameters())
    return await _embed(request, req.inputs, req)


async def rerank(request: web.Request, req: RerankRequest) -> web.Response:
    """TEI `/rerank` -> `[{"index", "score", "text"?}]`, best first. `raw_scores` gives the
    cross-encoder's logit (or, without a reranker, the cosine in [-1, 1]) instead of the
    [0, 1] score."""
    svc = model_service(request)
    texts = req.texts
    check_inputs(texts, max_inputs=svc.max_inputs, param="texts")
    scored = await svc.rerank(req.query, texts, instruction=req.instruction, truncate=req.truncate)
    scores = scored.scores
    out = []
    for i in sorted(range(len(texts)), key=lambda i: -scores[i]):
        score = float(scored.raw[i]) if req.raw_scores else float(scores[i])
        item: dict[str, Any] = {"index": i, "score": score}
        if req.return_text:
            item["text"] = texts[i]
        out.append(item)
    return web.json_response(out)


async def tokenize(request: web.Request, req: TokenizeRequest) -> web.Response:
    svc = model_service(request)
    inputs = [req.inputs] if isinstance(req.inputs, str) else req.inputs
    query, instruction = query_mode(req.prompt_name, req.instruction)
    tokens = await svc.tokens(
        inputs, add_special_tokens=req.add_special_tokens, query=query, instruction=instruction
    )
    return web.json_response([[asdict(t) for t in row] for row in tokens])


async def info(request: web.Request) -> web.Response:
    """TEI's /info fields, then localrank's own (backend, device, dim, rerank method...)."""
    svc = model_service(request)
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
