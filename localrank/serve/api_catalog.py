"""What each route takes and returns, for /openapi.json and /docs.

Keyed by (method, path without a trailing slash). `openapi.build_spec` walks the app's router,
so a route missing here still appears in the spec, flagged `x-undocumented` (a test fails on it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Schema = dict[str, Any]

STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
NUM: Schema = {"type": "number"}
BOOL: Schema = {"type": "boolean"}
OBJ: Schema = {"type": "object"}


def arr(items: Schema) -> Schema:
    return {"type": "array", "items": items}


def one_of(*schemas: Schema) -> Schema:
    return {"oneOf": list(schemas)}


TEXTS = one_of(STR, arr(STR))
TOKEN_IDS = arr(INT)


@dataclass(frozen=True)
class Param:
    """A JSON body field or a query-string parameter."""

    name: str
    schema: Schema
    description: str
    required: bool = False


@dataclass(frozen=True)
class Operation:
    summary: str
    tag: str
    description: str = ""
    body: tuple[Param, ...] = ()
    query: tuple[Param, ...] = ()
    example: dict[str, Any] | None = None
    response: Any = None
    status: int = 200
    content_type: str = "application/json"


MODEL = Param("model", STR, "The served model's id or alias; an unknown name is a 404.")
INPUT_TYPE = Param("input_type", STR, "query or document (also search_query / search_document).")
INSTRUCTION = Param("instruction", STR, "A task instruction for instruction-tuned models "
                    "(implies a query).")
DIMENSIONS = Param("dimensions", INT, "Matryoshka size: keep the first n dimensions, "
                   "re-normalised.")
TRUNCATE = Param("truncate", BOOL, "Cut inputs over the model's token limit (default true); "
                 "false makes them a 413.")
QUERY = Param("query", STR, "The query to rank documents against.", required=True)
VEC = [0.0123, -0.0456, 0.0789]

_EMBEDDING = {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": VEC}],
              "model": "sentence-transformers/all-MiniLM-L6-v2",
              "usage": {"prompt_tokens": 5, "total_tokens": 5, "truncated_inputs": 0}}
_COHERE = {"id": "3f0c...", "results": [{"index": 1, "relevance_score": 0.83},
                                        {"index": 0, "relevance_score": 0.51}],
           "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": 1},
                    "tokens": {"input_tokens": 18, "output_tokens": 0}},
           "model": "sentence-transformers/all-MiniLM-L6-v2", "usage": {"total_tokens": 18}}
_COHERE_BODY = (
    MODEL, QUERY,
    Param("documents", arr(one_of(STR, OBJ)), "Strings, or objects with a text field.",
          required=True),
    Param("top_n", INT, "Return only the best n (top_k is accepted too)."),
    Param("return_documents", BOOL, "Include each document (default false: the key is "
          "omitted)."),
    Param("max_tokens_per_doc", INT, "Cut each document to this many tokens first."),
    Param("rank_fields", arr(STR), "Cohere v1: object fields to rank on, in order."),
    INSTRUCTION,
)
_COHERE_EXAMPLE = {"model": "all-minilm-l6-v2", "query": "capital of France",
                   "documents": ["Berlin is in Germany.", "Paris is the capital of France."],
                   "top_n": 2}
_OLLAMA_BODY = (MODEL, Param("input", TEXTS, "Text or texts; empty answers no embeddings."),
                TRUNCATE, DIMENSIONS, Param("options", OBJ, "Accepted, not used."),
                Param("keep_alive", STR, "Accepted, not used (the model stays loaded)."))
_COLLECTION = {"name": "notes", "model": "sentence-transformers/all-MiniLM-L6-v2",
               "fingerprint": "sentence-transformers/all-MiniLM-L6-v2@982ecbb2c268:384:mean:...",
               "dim": 384, "created": "2025-01-01T00:00:00Z", "settings": {},
               "documents": 0, "chunks": 0}
_JOB = {"job_id": "j_01", "collection": "notes", "kind": "ingest", "state": "running",
        "total": 100, "done": 40, "failed": 0, "errors": [], "created": "...", "updated": "..."}
_NAME = "The collection's name (a path parameter)."

OPERATIONS: dict[tuple[str, str], Operation] = {
    # operations
    ("GET", "/health"): Operation(
        "Readiness: 200 with the model, backend, device, dtype and dim; 503 while loading.",
        "operations",
        response={"status": "ok", "model": "sentence-transformers/all-MiniLM-L6-v2",
                  "backend": "torch", "device": "cpu", "dtype": "float32", "dim": 384}),
    ("GET", "/metrics"): Operation(
        "Prometheus metrics: requests and latency per route, queue depth, batch sizes and "
        "tokens, cache hits, truncations, errors.", "operations",
        content_type="text/plain", response="localrank_requests_total{...} 3\n"),
    ("GET", "/openapi.json"): Operation("This OpenAPI 3.1 document.", "operations",
                                        response={"openapi": "3.1.0"}),
    ("GET", "/docs"): Operation("This page: every route, rendered offline.", "operations",
                                content_type="text/html"),
    # native
    ("POST", "/api/v1/embed"): Operation(
        "Embed texts (native shape).", "native",
        body=(Param("texts", arr(STR), "Texts to embed.", required=True),
              Param("batch_size", INT, "Accepted; the scheduler batches."),
              Param("normalize", BOOL, "Accepted; vectors are always unit length."),
              INPUT_TYPE, INSTRUCTION, DIMENSIONS, TRUNCATE),
        example={"texts": ["hello world"]},
        response={"vectors": [VEC], "dim": 384, "processing_time": 0.004, "device": "cpu",
                  "model_info": {"name": "sentence-transformers/all-MiniLM-L6-v2"},
                  "usage": {"prompt_tokens": 4, "total_tokens": 4}}),
    ("POST", "/api/v1/rerank"): Operation(
        "Rerank passages against a query (native shape).", "native",
        body=(QUERY, Param("passages", arr(STR), "Texts to rank (or `documents`)."),
              Param("documents", arr(one_of(STR, OBJ)), "Same as passages."),
              Param("top_k", INT, "Return only the best k."), INSTRUCTION, TRUNCATE),
        example={"query": "capital of France", "passages": ["Berlin", "Paris"]},
        response={"results": [{"text": "Paris", "score": 0.8, "index": 1}],
                  "query": "capital of France", "backend": "torch", "device": "cpu",
                  "method": "bi-encoder cosine", "processing_time": 0.01,
                  "usage": {"prompt_tokens": 9, "total_tokens": 9}}),
    # OpenAI
    ("POST", "/v1/embeddings"): Operation(
        "OpenAI embeddings.", "openai",
        "Document mode unless input_type says query. The official SDK asks for base64.",
        body=(MODEL,
              Param("input", one_of(STR, arr(STR), TOKEN_IDS, arr(TOKEN_IDS)),
                    "A string, strings, token ids or lists of token ids.", required=True),
              Param("encoding_format", STR, "float (default) or base64 (little-endian f32)."),
              DIMENSIONS, INPUT_TYPE, INSTRUCTION, TRUNCATE, Param("user", STR, "Ignored.")),
        example={"model": "all-minilm-l6-v2", "input": ["hello world"]}, response=_EMBEDDING),
    ("POST", "/embeddings"): Operation(
        "OpenAI embeddings without /v1; a {texts, model} body answers the kagent shape "
        "{embeddings, model, dimensions}.", "openai",
        body=(MODEL, Param("input", one_of(STR, arr(STR), TOKEN_IDS, arr(TOKEN_IDS)),
                           "OpenAI shape."),
              Param("texts", arr(STR), "kagent shape."), DIMENSIONS, INPUT_TYPE, INSTRUCTION),
        example={"texts": ["hello world"]},
        response={"embeddings": [VEC], "model": "sentence-transformers/all-MiniLM-L6-v2",
                  "dimensions": 384}),
    ("GET", "/embeddings"): Operation(
        "Embed one text given in the query string (kagent shape).", "openai",
        query=(Param("text", STR, "The text to embed.", required=True),),
        response={"embeddings": [VEC], "model": "sentence-transformers/all-MiniLM-L6-v2",
                  "dimensions": 384}),
    # Cohere / Jina
    ("POST", "/v1/rerank"): Operation(
        "Cohere v1 / Jina rerank.", "cohere",
        "relevance_score is the instructed query's cosine to each document, mapped to [0, 1].",
        body=_COHERE_BODY, example=_COHERE_EXAMPLE, response=_COHERE),
    ("POST", "/v2/rerank"): Operation(
        "Cohere v2 rerank (what cohere.ClientV2.rerank calls).", "cohere",
        body=_COHERE_BODY, example=_COHERE_EXAMPLE, response=_COHERE),
    # TEI
    ("POST", "/embed"): Operation(
        "TEI embed: a list of vectors.", "tei",
        body=(Param("inputs", one_of(STR, arr(STR)), "Text or texts.", required=True),
              Param("normalize", BOOL, "Accepted; vectors are always unit length."),
              TRUNCATE, Param("truncation_direction", STR, "Right (the only one supported)."),
              Param("prompt_name", STR, "query or document."), DIMENSIONS, INSTRUCTION),
        example={"inputs": ["hello world"]}, response=[VEC]),
    ("POST", "/rerank"): Operation(
        "TEI rerank: [{index, score, text?}] best first.", "tei",
        body=(QUERY, Param("texts", arr(STR), "Texts to rank.", required=True),
              Param("raw_scores", BOOL, "The cosine in [-1, 1] instead of [0, 1]."),
              Param("return_text", BOOL, "Include each text."), TRUNCATE, INSTRUCTION),
        example={"query": "capital of France", "texts": ["Berlin", "Paris"]},
        response=[{"index": 1, "score": 0.8}, {"index": 0, "score": 0.55}]),
    ("POST", "/tokenize"): Operation(
        "TEI tokenize: per input, its tokens with character spans.", "tei",
        body=(Param("inputs", one_of(STR, arr(STR)), "Text or texts.", required=True),
              Param("add_special_tokens", BOOL, "Include the model's special tokens "
                    "(default true)."), Param("prompt_name", STR, "query formats a query.")),
        example={"inputs": "hello world"},
        response=[[{"id": 101, "text": "[CLS]", "special": True, "start": None, "stop": None},
                   {"id": 7592, "text": "hello", "special": False, "start": 0, "stop": 5}]]),
    ("GET", "/info"): Operation(
        "TEI info, plus backend, device, dim, rerank_method, fallback and fingerprint.", "tei",
        response={"model_id": "sentence-transformers/all-MiniLM-L6-v2", "model_dtype": "float32",
                  "model_type": {"embedding": {"pooling": "mean"}}, "max_input_length": 256,
                  "backend": "torch", "device": "cpu", "dim": 384,
                  "rerank_method": "bi-encoder cosine ..."}),
    # Ollama
    ("POST", "/api/embed"): Operation(
        "Ollama embed (what ollama.Client.embed calls).", "ollama", body=_OLLAMA_BODY,
        example={"model": "all-minilm-l6-v2", "input": ["hello world"]},
        response={"model": "sentence-transformers/all-MiniLM-L6-v2", "embeddings": [VEC],
                  "total_duration": 4200000, "load_duration": 0, "prompt_eval_count": 4}),
    ("POST", "/api/embeddings"): Operation(
        "Ollama's legacy embeddings: one prompt, one vector.", "ollama",
        body=(MODEL, Param("prompt", STR, "The text."), Param("options", OBJ, "Ignored.")),
        example={"model": "all-minilm-l6-v2", "prompt": "hello world"},
        response={"embedding": VEC}),
    # search
    ("POST", "/v1/collections"): Operation(
        "Create a collection bound to the serving model.", "search", status=201,
        body=(Param("name", STR, "Collection name.", required=True),
              Param("settings", OBJ, "chunk_tokens (16..32768), chunk_overlap (0..16384).")),
        example={"name": "notes", "settings": {"chunk_tokens": 512}}, response=_COLLECTION),
    ("GET", "/v1/collections"): Operation("Every collection with its counts.", "search",
                                          response={"collections": [_COLLECTION]}),
    ("GET", "/v1/collections/{name}"): Operation("One collection.", "search",
                                                 response=_COLLECTION),
    ("DELETE", "/v1/collections/{name}"): Operation(
        "Delete a collection and its documents.", "search",
        response={"name": "notes", "deleted": True}),
    ("POST", "/v1/collections/{name}/documents"): Operation(
        "Upsert documents (chunked and embedded); async=true queues a job (202).", "search",
        body=(Param("documents", arr(OBJ), "{id, text, metadata?, source?} objects.",
                    required=True),
              Param("async", BOOL, "Queue a background job and answer its job_id.")),
        example={"documents": [{"id": "a.md", "text": "The cat sat.", "metadata": {}}]},
        response={"job_id": "j_01", "state": "queued", "total": 1}),
    ("GET", "/v1/collections/{name}/documents"): Operation(
        "List documents (without text), paged by id.", "search",
        query=(Param("limit", INT, "1..1000 (default 100)."),
               Param("after", STR, "The last id of the previous page.")),
        response={"documents": [{"id": "a.md"}], "next_after": None}),
    ("GET", "/v1/collections/{name}/documents/{doc_id}"): Operation(
        "A document with its chunks and their citations.", "search",
        response={"id": "a.md", "text": "The cat sat.", "chunks": [
            {"chunk_id": 1, "ordinal": 0, "text": "The cat sat.", "citation": "a.md"}]}),
    ("DELETE", "/v1/collections/{name}/documents/{doc_id}"): Operation(
        "Delete one document.", "search", response={"id": "a.md", "deleted": True}),
    ("POST", "/v1/collections/{name}/reindex"): Operation(
        "Re-embed a collection with the serving model (a job).", "search", status=202,
        body=(Param("force", BOOL, "Re-embed even when the model did not change."),),
        example={"force": False}, response={"job_id": "j_02", "state": "queued", "total": 10}),
    ("GET", "/v1/jobs"): Operation(
        "Recent jobs, newest first.", "search",
        query=(Param("state", STR, "queued, running, done or failed."),
               Param("limit", INT, "1..1000 (default 50).")),
        response={"jobs": [_JOB]}),
    ("GET", "/v1/jobs/{job_id}"): Operation("A job's state and progress.", "search",
                                            response=_JOB),
    ("POST", "/v1/search"): Operation(
        "Search a collection: hybrid (keyword + vector, reranked), vector or keyword.", "search",
        body=(Param("collection", STR, "Collection name.", required=True),
              Param("query", STR, "The query.", required=True),
              Param("top_k", INT, "1..1000 (default 10)."),
              Param("mode", STR, "hybrid (default), vector or keyword."),
              Param("rerank", BOOL, "Rerank the fused candidates (default: on for hybrid)."),
              Param("filter", OBJ, "Metadata key -> value or list of values."),
              INSTRUCTION, Param("candidates", INT, "Binary-scan candidates (1..100000).")),
        example={"collection": "notes", "query": "where did the cat sit?", "top_k": 5},
        response={"collection": "notes", "model": "sentence-transformers/all-MiniLM-L6-v2",
                  "mode": "hybrid", "reranked": True, "results": [], "timings_ms": {}}),
    ("POST", "/v1/compact"): Operation(
        "Reclaim space (VACUUM), trim tombstones, old jobs and the cache.", "search",
        response={"bytes_before": 0, "bytes_after": 0, "reclaimed": 0, "tombstones": 0,
                  "cache_rows_trimmed": 0, "jobs_removed": 0}),
}
