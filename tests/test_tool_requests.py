"""The exact requests of the tools people point at a local embedding server, replayed against the
real app, each asserting the fields that tool reads.

Request shapes are taken from each tool's source: Continue (core/llm/llms/HuggingFaceTEI.ts,
Cohere.ts), Open WebUI (backend/open_webui/retrieval/utils.py, models/external.py), Roo Code
(src/services/code-index/embedders/openai-compatible.ts, ollama.ts), LibreChat's RAG API
(langchain_openai.OpenAIEmbeddings with check_embedding_ctx_length), AnythingLLM
(server/utils/EmbeddingEngines/genericOpenAi, ollama), Obsidian Smart Connections
(jsbrains smart-embed-model/adapters/ollama.js, fetched from the app://obsidian.md origin) and
huggingface_hub's InferenceClient (feature_extraction, sentence_similarity).

One app with the real all-MiniLM-L6-v2 answers where vectors are compared (against a direct
engine, within 1e-5); one with the hashed stand-in backend answers the bulk requests (hundreds
of inputs), where only the plumbing is under test.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer
from fake_embedder import hash_engine, hash_loader

from localrank.config import Settings, load_settings
from localrank.engine.core import Engine, relevance
from localrank.engine.load import load_engine
from localrank.engine.names import STABLE_NAME
from localrank.serve.app import make_app
from localrank.serve.state import STATE_KEY

pytestmark = pytest.mark.asyncio(loop_scope="module")

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
SERVED = "my-embedder"
OBSIDIAN = "app://obsidian.md"
DOCS = [
    "Berlin is the capital of Germany.",
    "Paris is the capital of France.",
    "Bananas are yellow.",
    "The Eiffel Tower stands in Paris.",
]
QUERY = "What is the capital of France?"


def settings_for(model: Path, home: Path, **extra: Any) -> Settings:
    flags = {
        "model": str(model),
        "backend": "cpu",
        "dtype": "float32",  # vectors compared with the recipe's exactly, whatever the CPU
        "home": str(home),
        "served_model_names": [SERVED],
        "allowed_origins": [OBSIDIAN],
        **extra,
    }
    return load_settings(flags, environ={})


@pytest.fixture(scope="module")
def settings(minilm: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return settings_for(minilm, tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="module")
def engine(settings: Settings) -> Engine:
    """The reference: the same model called directly."""
    return load_engine(settings)


async def started(app: Any) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(app)) as c:
        await app[STATE_KEY].ready.wait()
        assert app[STATE_KEY].models is not None, app[STATE_KEY].load_error
        yield c


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(settings: Settings) -> AsyncIterator[TestClient]:
    async for c in started(make_app(settings)):
        yield c


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def bulk(minilm: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TestClient]:
    """The daemon around the hashed stand-in backend: for requests whose size is the point."""
    app = make_app(
        settings_for(minilm, tmp_path_factory.mktemp("bulk-home")), loader=hash_loader(minilm)
    )
    async for c in started(app):
        yield c


@pytest.fixture(scope="module")
def bulk_engine(minilm: Path) -> Engine:
    return hash_engine(minilm)


def close(got: Any, want: np.ndarray, atol: float = 1e-5) -> bool:
    got = np.asarray(got, dtype=np.float32)
    return got.shape == want.shape and bool(np.allclose(got, want, atol=atol))


def from_base64(data: list[dict[str, Any]]) -> np.ndarray:
    """What the OpenAI SDKs (and Roo Code by hand) do with encoding_format=base64."""
    return np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in data])


def rerank_scores(engine: Engine, query: str, docs: list[str]) -> np.ndarray:
    q = engine.embed([query], query=True).vectors[0]
    return relevance(engine.embed(docs).vectors @ q)


async def ok_json(response: Any) -> Any:
    assert response.status == 200, await response.text()
    return await response.json()


def code_blocks(n: int, chars: int) -> list[str]:
    """Roo Code indexes code in blocks of up to ~1,000 characters (MAX_BLOCK_CHARS)."""
    line = "def handler_{i}(request, response):  # routes request {i} to its handler\n"
    return [(line.format(i=i) * (chars // len(line) + 1))[:chars] for i in range(n)]


# --- Continue ---------------------------------------------------------------------------------


async def test_continue_tei_provider(
    client: TestClient, engine: Engine, settings: Settings
) -> None:
    """HuggingFaceTEI.ts: /info for model_id and max_client_batch_size, then /embed batches of
    that size, and /rerank with its fixed flags, re-sorted by index."""
    info = await ok_json(await client.get("/info"))
    assert info["model_id"] == engine.info.display_name
    assert info["max_client_batch_size"] == settings.max_inputs
    headers = {"Content-Type": "application/json"}
    body = await ok_json(await client.post("/embed", json={"inputs": DOCS}, headers=headers))
    assert close(body, engine.embed(DOCS).vectors)
    r = await client.post(
        "/rerank",
        json={
            "query": QUERY,
            "return_text": False,
            "raw_scores": False,
            "texts": DOCS,
            "truncation_direction": "Right",
            "truncate": True,
        },
        headers=headers,
    )
    results = sorted(await ok_json(r), key=lambda x: x["index"])
    assert close([x["score"] for x in results], rerank_scores(engine, QUERY, DOCS))
    assert all("text" not in x for x in results)


@pytest.mark.parametrize("api_base", ["/v1/", "/v2/"])
async def test_continue_cohere_provider(client: TestClient, engine: Engine, api_base: str) -> None:
    """Cohere.ts posts `${apiBase}embed` with input_type search_document and reads
    embeddings.float; rerank reads results[].relevance_score."""
    headers = {"Authorization": "Bearer any-key", "Content-Type": "application/json"}
    r = await client.post(
        api_base + "embed",
        json={
            "texts": DOCS,
            "model": SERVED,
            "input_type": "search_document",
            "embedding_types": ["float"],
            "truncate": "END",
        },
        headers=headers,
    )
    body = await ok_json(r)
    assert close(body["embeddings"]["float"], engine.embed(DOCS).vectors)
    r = await client.post(
        api_base + "rerank",
        json={"model": SERVED, "query": QUERY, "documents": DOCS},
        headers=headers,
    )
    results = sorted((await ok_json(r))["results"], key=lambda x: x["index"])
    assert close([x["relevance_score"] for x in results], rerank_scores(engine, QUERY, DOCS))


# --- Open WebUI -------------------------------------------------------------------------------

OPEN_WEBUI_HEADERS = {
    "Authorization": "Bearer ",  # RAG_OPENAI_API_KEY left empty
    "X-OpenWebUI-User-Name": "Jane%20Doe",
    "X-OpenWebUI-User-Id": "7d1c",
    "X-OpenWebUI-User-Email": "jane@example.com",
    "X-OpenWebUI-User-Role": "user",
}


async def test_open_webui_concurrent_single_text_requests(
    client: TestClient, engine: Engine
) -> None:
    """agenerate_openai_batch_embeddings with RAG_EMBEDDING_BATCH_SIZE 1: one text per request,
    all batches gathered at once; it reads data[].embedding."""
    texts = [f"Paragraph {i} of an uploaded file, about topic {i % 7}." for i in range(48)]

    async def one(text: str) -> list[float]:
        r = await client.post(
            "/v1/embeddings", json={"input": [text], "model": SERVED}, headers=OPEN_WEBUI_HEADERS
        )
        data = (await ok_json(r))["data"]
        assert len(data) == 1
        return list(data[0]["embedding"])

    got = await asyncio.gather(*(one(t) for t in texts))
    assert close(got, engine.embed(texts).vectors)
    # RAG_EMBEDDING_PREFIX_FIELD_NAME=input_type with RAG_EMBEDDING_QUERY_PREFIX=query.
    r = await client.post(
        "/v1/embeddings",
        json={"input": [QUERY], "model": SERVED, "input_type": "query"},
        headers=OPEN_WEBUI_HEADERS,
    )
    data = (await ok_json(r))["data"]
    assert close([data[0]["embedding"]], engine.embed([QUERY], query=True).vectors)


async def test_open_webui_ollama_engine_and_external_reranker(
    client: TestClient, engine: Engine
) -> None:
    r = await client.post(
        "/api/embed",
        json={"input": DOCS, "model": SERVED, "truncate": True},
        headers=OPEN_WEBUI_HEADERS,
    )
    assert close((await ok_json(r))["embeddings"], engine.embed(DOCS).vectors)
    # ExternalReranker.predict: {model, query, documents, top_n: len(docs)}, sorted by index.
    r = await client.post(
        "/v1/rerank",
        json={"model": SERVED, "query": QUERY, "documents": DOCS, "top_n": len(DOCS)},
        headers=OPEN_WEBUI_HEADERS,
    )
    results = sorted((await ok_json(r))["results"], key=lambda x: x["index"])
    assert len(results) == len(DOCS)
    assert close([x["relevance_score"] for x in results], rerank_scores(engine, QUERY, DOCS))


# --- Roo Code ---------------------------------------------------------------------------------


async def test_roo_code_openai_compatible(bulk: TestClient, bulk_engine: Engine) -> None:
    """OpenAICompatibleEmbedder: validation with ["test"], then batches of up to 100,000
    estimated tokens (characters / 4) of code blocks, always base64, never `dimensions`; a base
    URL ending in /embeddings is posted directly with an api-key header too."""
    headers = {"Authorization": "Bearer roo-key", "Content-Type": "application/json"}
    r = await bulk.post(
        "/v1/embeddings",
        json={"input": ["test"], "model": SERVED, "encoding_format": "base64"},
        headers=headers,
    )
    assert len((await ok_json(r))["data"]) == 1
    texts = code_blocks(360, 1100)
    assert sum(len(t) // 4 for t in texts) <= 100_000  # one of Roo's batches
    r = await bulk.post(
        "/v1/embeddings",
        json={"input": texts, "model": SERVED, "encoding_format": "base64"},
        headers=headers,
    )
    body = await ok_json(r)
    assert [d["index"] for d in body["data"]] == list(range(len(texts)))
    want = bulk_engine.embed(texts)
    assert close(from_base64(body["data"]), want.vectors)
    assert body["usage"]["prompt_tokens"] == want.prompt_tokens > 50_000
    r = await bulk.post(
        "/v1/embeddings",
        json={"input": texts[:3], "model": SERVED, "encoding_format": "base64"},
        headers={**headers, "api-key": "roo-key"},
    )
    assert close(from_base64((await ok_json(r))["data"]), want.vectors[:3])


@pytest.mark.parametrize("configured", [SERVED, f"{SERVED}:latest", "all-minilm"])
async def test_roo_code_ollama_mode(client: TestClient, engine: Engine, configured: str) -> None:
    """CodeIndexOllamaEmbedder.validateConfiguration: /api/tags must list the configured model
    (with or without :latest), a test embedding must work; then /api/embed {model, input}."""
    r = await client.get("/api/tags", headers={"Content-Type": "application/json"})
    models = (await ok_json(r))["models"]
    assert any(
        m["name"] in (configured, f"{configured}:latest", configured.replace(":latest", ""))
        for m in models
    ), [m["name"] for m in models]
    r = await client.post("/api/embed", json={"model": configured, "input": ["test"]})
    assert len((await ok_json(r))["embeddings"]) == 1
    r = await client.post("/api/embed", json={"model": configured, "input": DOCS})
    assert close((await ok_json(r))["embeddings"], engine.embed(DOCS).vectors)


# --- LibreChat's RAG API ----------------------------------------------------------------------


async def test_librechat_rag_api_token_ids(client: TestClient, engine: Engine) -> None:
    """EMBEDDINGS_PROVIDER=openai: langchain's OpenAIEmbeddings sends token-id arrays. Ids of
    the served model's tokenizer (with its special tokens) embed exactly like the text; ids
    neither tokenizer makes (here: past this vocabulary, with tiktoken's <|endoftext|>) are
    refused with the setting that turns them off. tests/test_langchain.py runs langchain."""
    ids = [e.ids for e in engine.tokenizer.encode(DOCS)]
    r = await client.post(
        "/v1/embeddings", json={"input": ids, "model": SERVED, "encoding_format": "base64"}
    )
    body = await ok_json(r)
    assert close(from_base64(body["data"]), engine.embed(DOCS).vectors)
    assert body["usage"]["prompt_tokens"] == engine.embed(DOCS).prompt_tokens
    tiktoken_ids = [[9906, 1917, 100257, 57668]]
    r = await client.post("/v1/embeddings", json={"input": tiktoken_ids, "model": SERVED})
    error = (await r.json())["error"]
    assert r.status == 422 and "RAG_CHECK_EMBEDDING_CTX_LENGTH=false" in error["message"]
    assert error["param"] == "input"


# --- AnythingLLM ------------------------------------------------------------------------------


async def test_anythingllm_generic_openai(bulk: TestClient, bulk_engine: Engine) -> None:
    """GenericOpenAiEmbedder: the openai-node SDK, 500 chunks per request
    (GENERIC_OPEN_AI_EMBEDDING_MAX_CONCURRENT_CHUNKS), base64 by the SDK's default."""
    texts = [
        f"chunk {i}: " + "some document text about a subject " * (1 + i % 9) for i in range(500)
    ]
    headers = {
        "Authorization": "Bearer null",  # GENERIC_OPEN_AI_EMBEDDING_API_KEY unset
        "User-Agent": "OpenAI/JS 4.104.0",
        "X-Stainless-Lang": "js",
        "X-Stainless-Retry-Count": "0",
    }
    r = await bulk.post(
        "/v1/embeddings",
        json={"model": SERVED, "input": texts, "encoding_format": "base64"},
        headers=headers,
    )
    data = (await ok_json(r))["data"]
    assert len(data) == 500 and all("embedding" in d for d in data)
    assert close(from_base64(data), bulk_engine.embed(texts).vectors)


async def test_anythingllm_ollama(client: TestClient, engine: Engine) -> None:
    """OllamaEmbedder: GET the base path (must be ok), then ollama-js embed with num_ctx."""
    r = await client.get("/")
    assert r.status == 200 and await r.text() == "Ollama is running"
    r = await client.post(
        "/api/embed", json={"model": SERVED, "input": DOCS[:1], "options": {"num_ctx": 8192}}
    )
    assert close((await ok_json(r))["embeddings"], engine.embed(DOCS[:1]).vectors)


# --- Obsidian Smart Connections ---------------------------------------------------------------


def smart_connections_embedding_models(models: list[dict[str, Any]]) -> list[str]:
    """smart-embed-model's filter_embedding_models: names containing embed/embedding/bge."""
    return [
        m["name"]
        for m in models
        if any(k in m["name"].lower() for k in ("embed", "embedding", "bge"))
    ]


async def test_obsidian_smart_connections(client: TestClient, engine: Engine) -> None:
    """SmartEmbedOllamaAdapter through fetch() in Obsidian: GET /api/tags, POST /api/show per
    embedding model (a JSON string body, so text/plain), read *.context_length and
    *.embedding_length from model_info, then /api/embed in batches of 30 (preflighted)."""
    origin = {"Origin": OBSIDIAN}
    r = await client.get("/api/tags", headers=origin)
    assert r.headers["Access-Control-Allow-Origin"] == OBSIDIAN
    names = smart_connections_embedding_models((await ok_json(r))["models"])
    assert STABLE_NAME in names
    for name in names:
        r = await client.post(
            "/api/show",
            data=json.dumps({"model": name}),
            headers={**origin, "Content-Type": "text/plain;charset=UTF-8"},
        )
        assert r.headers["Access-Control-Allow-Origin"] == OBSIDIAN
        info = (await ok_json(r))["model_info"]
        ctx = next(v for k, v in info.items() if "context_length" in k)
        dims = next(v for k, v in info.items() if "embedding_length" in k)
        assert (ctx, dims) == (256, 384)
    preflight = await client.options(
        "/api/embed",
        headers={
            **origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == OBSIDIAN
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "content-type" in preflight.headers["Access-Control-Allow-Headers"].lower()
    texts = [f"Note {i}: a paragraph from the vault about subject {i}." for i in range(30)]
    r = await client.post("/api/embed", json={"model": STABLE_NAME, "input": texts}, headers=origin)
    body = await ok_json(r)
    assert r.headers["Access-Control-Allow-Origin"] == OBSIDIAN
    want = engine.embed(texts)
    assert close(body["embeddings"], want.vectors)
    assert body["prompt_eval_count"] == want.prompt_tokens
    # Any other page stays refused, with nothing a browser would let it read.
    r = await client.get("/api/tags", headers={"Origin": "https://evil.example"})
    assert r.status == 403 and "Access-Control-Allow-Origin" not in r.headers


# --- Hugging Face: InferenceClient(model=URL) and LangChain's HuggingFaceEndpointEmbeddings -----


async def test_huggingface_hub_payloads_on_root(client: TestClient, engine: Engine) -> None:
    """What huggingface_hub 2.x posts to a TEI URL: feature_extraction {"inputs": text or
    texts}, sentence_similarity {"inputs": {source_sentence, sentences}, "parameters": {}}."""
    got = await ok_json(await client.post("/", json={"inputs": DOCS[0]}))
    assert close(got, engine.embed(DOCS[:1]).vectors)
    got = await ok_json(await client.post("/", json={"inputs": DOCS, "normalize": True}))
    assert close(got, engine.embed(DOCS).vectors)
    similarity = {"inputs": {"source_sentence": QUERY, "sentences": DOCS}, "parameters": {}}
    vectors = engine.embed([QUERY, *DOCS]).vectors
    for path in ("/", "/similarity"):
        got = await ok_json(await client.post(path, json=similarity))
        assert close(got, vectors[1:] @ vectors[0])


# --- the root path: Ollama's liveness on GET/HEAD, TEI's embed on POST --------------------------


async def test_root_path_per_method(client: TestClient) -> None:
    r = await client.get("/")
    assert (r.status, await r.text(), r.content_type) == (200, "Ollama is running", "text/plain")
    r = await client.head("/")
    assert r.status == 200
    r = await client.post("/", json={"inputs": []})  # TEI's error shape on TEI's route
    body = await r.json()
    assert r.status == 422 and set(body) == {"error", "error_type"}
    r = await client.post("/", json={"inputs": {"source_sentence": "x", "sentences": []}})
    assert r.status == 422 and set(await r.json()) == {"error", "error_type"}
    r = await client.put("/", json={})  # no route: the path's first dialect (TEI) answers 405
    assert r.status == 405 and set(await r.json()) == {"error", "error_type"}


# --- one list of names everywhere -------------------------------------------------------------


async def test_health_info_models_and_tags_show_the_same_names(client: TestClient) -> None:
    health = await ok_json(await client.get("/health"))
    info = await ok_json(await client.get("/info"))
    models = await ok_json(await client.get("/v1/models"))
    tags = await ok_json(await client.get("/api/tags"))
    names = health["names"]
    assert names[:3] == [SERVED, MINILM_ID, "all-MiniLM-L6-v2"] and names[-1] == STABLE_NAME
    assert info["names"] == names
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == names
    assert all(m["object"] == "model" and m["owned_by"] for m in models["data"])
    assert [m["name"] for m in tags["models"]] == names
    assert all(m["details"]["family"] == "bert" for m in tags["models"])
    ps = await ok_json(await client.get("/api/ps"))
    assert [m["name"] for m in ps["models"]] == [SERVED]
    assert ps["models"][0]["context_length"] == 256
    version = await ok_json(await client.get("/api/version"))
    assert isinstance(version["version"], str)


async def test_models_by_name(client: TestClient) -> None:
    for name in (SERVED, MINILM_ID, "minilm", STABLE_NAME):
        body = await ok_json(await client.get(f"/v1/models/{name}"))
        assert body["id"] == name and body["root"] == MINILM_ID
    r = await client.get("/v1/models/text-embedding-3-small")
    error = (await r.json())["error"]
    assert r.status == 404 and set(error) == {"message", "type", "param", "code"}
    assert f'"{SERVED}"' in error["message"] and f'"{MINILM_ID}"' in error["message"]


async def test_every_dialect_answers_to_every_name(client: TestClient) -> None:
    requests = [
        ("/v1/embeddings", lambda m: {"model": m, "input": "x"}),
        ("/v2/rerank", lambda m: {"model": m, "query": "x", "documents": ["y"]}),
        ("/v2/embed", lambda m: {"model": m, "texts": ["x"], "input_type": "search_document"}),
        ("/api/embed", lambda m: {"model": m, "input": "x"}),
        ("/api/show", lambda m: {"model": m}),
    ]
    for path, body in requests:
        for name in (SERVED, MINILM_ID, "all-minilm-l6-v2", STABLE_NAME, "default"):
            r = await client.post(path, json=body(name))
            assert r.status == 200, (path, name, await r.text())
        r = await client.post(path, json=body("nomic-embed-text"))
        assert r.status == 404, path
        assert SERVED in json.dumps(await r.json()), path
    r = await client.post("/api/show", json={"name": f"{SERVED}:latest"})  # Continue's field
    assert r.status == 200
    r = await client.post("/api/show", json={"model": "nomic-embed-text"})
    assert (await r.json())["error"].startswith("model 'nomic-embed-text' not found")


async def test_cohere_embed_shapes(client: TestClient, engine: Engine) -> None:
    want = engine.embed(DOCS[:2]).vectors
    r = await client.post("/v1/embed", json={"texts": DOCS[:2]})  # v1 without types: a list
    body = await ok_json(r)
    assert body["response_type"] == "embeddings_floats" and close(body["embeddings"], want)
    inputs = [{"content": [{"type": "text", "text": t}]} for t in DOCS[:2]]
    r = await client.post("/v2/embed", json={"inputs": inputs, "input_type": "search_document"})
    assert close((await ok_json(r))["embeddings"]["float"], want)
    for bad in (
        {"texts": DOCS, "embedding_types": ["int4"]},
        {"texts": DOCS, "truncate": "START"},
        {"inputs": [{"content": [{"type": "image_url", "image_url": "x"}]}]},
    ):
        r = await client.post("/v2/embed", json=bad)
        assert r.status == 422 and isinstance((await r.json())["message"], str)
    r = await client.post("/v2/embed", json={"texts": ["word " * 400], "truncate": "NONE"})
    assert r.status == 413


async def test_without_a_model_the_liveness_answers_and_listings_say_why(
    minilm: Path, tmp_path: Path
) -> None:
    def never(_: Settings) -> Engine:
        raise RuntimeError("not this time")

    app = make_app(settings_for(minilm, tmp_path), loader=never)
    async with TestClient(TestServer(app)) as c:
        await app[STATE_KEY].ready.wait()
        assert (await c.get("/")).status == 200
        assert (await c.get("/api/version")).status == 200
        for path in ("/v1/models", "/api/tags", "/api/ps", "/info"):
            assert (await c.get(path)).status == 503, path


async def test_query_and_document_modes_on_the_new_routes(tiny_qwen3: Path, tmp_path: Path) -> None:
    """The tiny Qwen3 has an instruction template, so a query and a document differ: Cohere's
    input_type and TEI's prompt_name reach the recipe on the routes added for these tools.
    float32: the daemon caches the query instruction's keys and values once serving, and in
    bfloat16 (auto on a CPU with native bfloat16) a query computed after that prefix differs
    from a whole-row pass by bfloat16's rounding, not float32's."""
    settings = settings_for(tiny_qwen3, tmp_path, dtype="float32")
    ref = load_engine(settings)
    query_vec = ref.embed([QUERY], query=True).vectors
    doc_vec = ref.embed([QUERY]).vectors
    assert not close(query_vec, doc_vec, atol=1e-3)
    async for c in started(make_app(settings)):
        for input_type, want in (("search_query", query_vec), ("search_document", doc_vec)):
            r = await c.post("/v2/embed", json={"texts": [QUERY], "input_type": input_type})
            assert close((await ok_json(r))["embeddings"]["float"], want)
        r = await c.post("/", json={"inputs": QUERY, "prompt_name": "query"})
        assert close(await ok_json(r), query_vec)
        body = {
            "inputs": {"source_sentence": QUERY, "sentences": DOCS},
            "parameters": {"prompt_name": "query"},
        }
        vectors = ref.embed([QUERY, *DOCS], query=True).vectors
        assert close(
            await ok_json(await c.post("/similarity", json=body)), vectors[1:] @ vectors[0]
        )
    ref.close()
