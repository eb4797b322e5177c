"""Every route of the daemon, in-process: shapes, vectors against the engine, and bad input in
each dialect's own error shape. One app with the real MiniLM serves the whole module."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from localrank.config import Settings, load_settings
from localrank.engine.core import Engine
from localrank.engine.load import load_engine
from localrank.errors import ModelError
from localrank.serve.app import make_app
from localrank.serve.state import STATE_KEY

pytestmark = pytest.mark.asyncio(loop_scope="module")

MAX_INPUTS = 8
MAX_BODY = 64 * 1024
LONG = "word " * 400  # over MiniLM's 256 tokens
DOCS = [
    "Berlin is the capital of Germany.",
    "Paris is the capital of France.",
    "Bananas are yellow.",
    "The Eiffel Tower stands in Paris.",
]
QUERY = "What is the capital of France?"


def settings_for(model: Path, home: Path, **extra: Any) -> Settings:
    # float32: vectors are compared with the recipe's exactly, whatever this CPU's bfloat16.
    flags = {"model": str(model), "backend": "cpu", "dtype": "float32", "home": str(home), **extra}
    return load_settings(flags, environ={})


@pytest.fixture(scope="module")
def settings(minilm: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return settings_for(
        minilm, tmp_path_factory.mktemp("home"), max_inputs=MAX_INPUTS, max_body_bytes=MAX_BODY
    )


@pytest.fixture(scope="module")
def engine(settings: Settings) -> Engine:
    """A second, direct engine: the reference the served vectors must equal."""
    return load_engine(settings)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(settings: Settings) -> AsyncIterator[TestClient]:
    app = make_app(settings)
    async with TestClient(TestServer(app)) as c:
        await app[STATE_KEY].ready.wait()
        assert app[STATE_KEY].models is not None, app[STATE_KEY].load_error
        yield c


def close(got: Any, want: np.ndarray, atol: float = 1e-5) -> bool:
    return bool(np.allclose(np.asarray(got, dtype=np.float32), want, atol=atol))


def cosine_order(engine: Engine, query: str, docs: list[str]) -> tuple[list[int], np.ndarray]:
    q = engine.embed([query], query=True).vectors[0]
    d = engine.embed(docs).vectors
    scores = (d @ q + 1.0) / 2.0
    return sorted(range(len(docs)), key=lambda i: -scores[i]), scores


# --- OpenAI and kagent ---------------------------------------------------------------------


async def test_openai_string_list_and_token_ids(client: TestClient, engine: Engine) -> None:
    want = engine.embed(DOCS[:2])
    r = await client.post("/v1/embeddings", json={"input": DOCS[0], "model": "minilm"})
    assert r.status == 200
    one = await r.json()
    assert one["object"] == "list" and one["model"] == engine.info.display_name
    assert close(one["data"][0]["embedding"], want.vectors[0])

    r = await client.post("/v1/embeddings", json={"input": DOCS[:2]})
    body = await r.json()
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert close([d["embedding"] for d in body["data"]], want.vectors)
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] == want.prompt_tokens

    ids = [e.ids for e in engine.tokenizer.encode(DOCS[:2])]
    r = await client.post("/v1/embeddings", json={"input": ids[0]})  # one input as token ids
    assert close((await r.json())["data"][0]["embedding"], want.vectors[0])
    r = await client.post("/v1/embeddings", json={"input": ids})  # a list of token-id lists
    body = await r.json()
    assert close([d["embedding"] for d in body["data"]], want.vectors)
    assert body["usage"]["prompt_tokens"] == want.prompt_tokens


async def test_openai_base64_equals_float(client: TestClient) -> None:
    floats = await (await client.post("/v1/embeddings", json={"input": DOCS})).json()
    b64 = await (
        await client.post("/v1/embeddings", json={"input": DOCS, "encoding_format": "base64"})
    ).json()
    for f, b in zip(floats["data"], b64["data"], strict=True):
        decoded = np.frombuffer(base64.b64decode(b["embedding"]), dtype="<f4")
        assert np.array_equal(decoded, np.asarray(f["embedding"], dtype=np.float32))


async def test_openai_dimensions(client: TestClient, engine: Engine) -> None:
    r = await client.post("/v1/embeddings", json={"input": DOCS[0], "dimensions": 64})
    vec = np.asarray((await r.json())["data"][0]["embedding"])
    cut = engine.embed([DOCS[0]]).vectors[0][:64]
    assert vec.shape == (64,) and close(vec, cut / np.linalg.norm(cut))


async def test_kagent_shapes(client: TestClient, engine: Engine) -> None:
    want = engine.embed(DOCS[:2]).vectors
    r = await client.post("/embeddings", json={"texts": DOCS[:2], "model": "minilm"})
    body = await r.json()
    assert r.status == 200 and body["dimensions"] == 384
    assert body["model"] == engine.info.display_name and close(body["embeddings"], want)
    r = await client.get("/embeddings", params={"text": DOCS[0]})
    assert r.status == 200 and close((await r.json())["embeddings"], want[:1])
    r = await client.get("/embeddings")
    assert r.status == 422 and set((await r.json())["error"]) == {
        "message",
        "type",
        "param",
        "code",
    }
    r = await client.post("/embeddings", json={"input": DOCS[0]})  # OpenAI shape there too
    assert close((await r.json())["data"][0]["embedding"], want[0])


# --- native ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/v1/embed", "/api/v1/embed/"])
async def test_native_embed(client: TestClient, engine: Engine, path: str) -> None:
    r = await client.post(path, json={"texts": DOCS, "batch_size": 2, "normalize": True})
    body = await r.json()
    assert r.status == 200 and body["dim"] == 384 and body["device"] == "cpu"
    assert close(body["vectors"], engine.embed(DOCS).vectors)
    assert body["model_info"]["name"] == engine.info.display_name
    assert body["usage"]["prompt_tokens"] == engine.embed(DOCS).prompt_tokens


@pytest.mark.parametrize(
    ("path", "key"), [("/api/v1/rerank", "passages"), ("/api/v1/rerank/", "documents")]
)
async def test_native_rerank(client: TestClient, engine: Engine, path: str, key: str) -> None:
    r = await client.post(path, json={"query": QUERY, key: DOCS, "top_k": 3})
    body = await r.json()
    order, scores = cosine_order(engine, QUERY, DOCS)
    assert r.status == 200 and [x["index"] for x in body["results"]] == order[:3]
    assert all(x["text"] == DOCS[x["index"]] for x in body["results"])
    assert close([x["score"] for x in body["results"]], scores[order[:3]])
    assert body["query"] == QUERY and body["device"] == "cpu"


# --- Cohere / Jina --------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/rerank", "/v2/rerank"])
async def test_cohere_rerank_strings(client: TestClient, engine: Engine, path: str) -> None:
    r = await client.post(
        path, json={"model": "all-minilm-l6-v2", "query": QUERY, "documents": DOCS, "top_n": 2}
    )
    body = await r.json()
    order, scores = cosine_order(engine, QUERY, DOCS)
    assert r.status == 200
    assert [x["index"] for x in body["results"]] == order[:2]
    assert close([x["relevance_score"] for x in body["results"]], scores[order[:2]])
    assert all(set(x) == {"index", "relevance_score"} for x in body["results"])  # no document
    assert all(0.0 <= x["relevance_score"] <= 1.0 for x in body["results"])
    assert body["meta"]["billed_units"] == {"search_units": 1}
    assert body["meta"]["api_version"]["version"] == path[2]
    tokens = body["meta"]["tokens"]["input_tokens"]
    assert tokens > 0 and body["usage"] == {"total_tokens": tokens}
    assert body["model"] == engine.info.display_name and body["id"]


@pytest.mark.parametrize("path", ["/v1/rerank", "/v2/rerank"])
async def test_cohere_rerank_objects_top_k_and_documents(
    client: TestClient, engine: Engine, path: str
) -> None:
    docs = [{"text": d, "id": str(i)} for i, d in enumerate(DOCS)]
    r = await client.post(
        path, json={"query": QUERY, "documents": docs, "top_k": 3, "return_documents": True}
    )
    body = await r.json()
    order, _ = cosine_order(engine, QUERY, DOCS)
    assert [x["index"] for x in body["results"]] == order[:3]
    assert all(x["document"] == docs[x["index"]] for x in body["results"])

    r = await client.post(path, json={"query": QUERY, "documents": DOCS, "return_documents": True})
    results = (await r.json())["results"]
    assert len(results) == len(DOCS)
    assert all(x["document"] == {"text": DOCS[x["index"]]} for x in results)

    r = await client.post(path, json={"query": QUERY, "documents": DOCS, "return_documents": False})
    assert all("document" not in x for x in (await r.json())["results"])


async def test_cohere_rank_fields_and_max_tokens_per_doc(
    client: TestClient, engine: Engine
) -> None:
    docs = [{"title": "Germany", "text": DOCS[0]}, {"title": "France", "text": DOCS[1]}]
    r = await client.post(
        "/v1/rerank", json={"query": QUERY, "documents": docs, "rank_fields": ["title", "text"]}
    )
    ranked = [f"title: {d['title']}\ntext: {d['text']}" for d in docs]
    assert [x["index"] for x in (await r.json())["results"]] == cosine_order(engine, QUERY, ranked)[
        0
    ]
    # Cut to 3 tokens, the long tail no longer counts: the score equals the cut text's.
    long_doc = "Paris is the capital of France and a lot more besides."
    r = await client.post(
        "/v2/rerank", json={"query": QUERY, "documents": [long_doc], "max_tokens_per_doc": 3}
    )
    score = (await r.json())["results"][0]["relevance_score"]
    assert close(score, cosine_order(engine, QUERY, ["Paris is the"])[1][0])


# --- TEI --------------------------------------------------------------------------------------


async def test_tei_embed(client: TestClient, engine: Engine) -> None:
    r = await client.post("/embed", json={"inputs": DOCS[0]})
    assert r.status == 200 and close(await r.json(), engine.embed(DOCS[:1]).vectors)
    r = await client.post(
        "/embed",
        json={
            "inputs": DOCS,
            "normalize": True,
            "truncate": True,
            "truncation_direction": "Right",
            "dimensions": 128,
        },
    )
    body = await r.json()
    assert np.asarray(body).shape == (len(DOCS), 128)
    r = await client.post("/embed", json={"inputs": DOCS, "truncation_direction": "Left"})
    assert r.status == 422 and (await r.json())["error_type"] == "Validation"


async def test_tei_rerank(client: TestClient, engine: Engine) -> None:
    order, scores = cosine_order(engine, QUERY, DOCS)
    r = await client.post("/rerank", json={"query": QUERY, "texts": DOCS})
    body = await r.json()
    assert [x["index"] for x in body] == order and all(set(x) == {"index", "score"} for x in body)
    assert close([x["score"] for x in body], scores[order])
    r = await client.post(
        "/rerank", json={"query": QUERY, "texts": DOCS, "return_text": True, "raw_scores": True}
    )
    body = await r.json()
    assert [x["text"] for x in body] == [DOCS[i] for i in order]
    assert close([x["score"] for x in body], scores[order] * 2 - 1)


async def test_tei_tokenize(client: TestClient, engine: Engine) -> None:
    text = "Hello world, testing!"
    r = await client.post("/tokenize", json={"inputs": [text, "Bananas"]})
    body = await r.json()
    assert r.status == 200 and len(body) == 2
    tokens = body[0]
    assert [t["id"] for t in tokens] == engine.tokenizer.encode([text])[0].ids
    assert tokens[0] == {"id": 101, "text": "[CLS]", "special": True, "start": None, "stop": None}
    assert tokens[-1]["special"] and tokens[-1]["text"] == "[SEP]"
    assert all(text[t["start"] : t["stop"]] == t["text"] for t in tokens[1:-1])
    assert tokens[1] == {"id": 7592, "text": "Hello", "special": False, "start": 0, "stop": 5}
    r = await client.post("/tokenize", json={"inputs": text, "add_special_tokens": False})
    assert [t["special"] for t in (await r.json())[0]] == [False] * (len(tokens) - 2)


async def test_tei_info(client: TestClient, engine: Engine) -> None:
    r = await client.get("/info")
    body = await r.json()
    assert r.status == 200
    assert body["model_id"] == engine.info.display_name
    assert body["model_type"] == {"embedding": {"pooling": "mean"}}
    assert body["max_input_length"] == 256 and body["max_client_batch_size"] == MAX_INPUTS
    for key in (
        "model_sha",
        "model_dtype",
        "max_concurrent_requests",
        "max_batch_tokens",
        "tokenization_workers",
        "version",
    ):
        assert key in body
    assert (body["backend"], body["device"], body["dim"]) == ("torch", "cpu", 384)
    assert body["rerank_method"].startswith("bi-encoder cosine")
    assert body["fallback"] is False and body["fingerprint"] == engine.info.fingerprint


# --- Ollama -----------------------------------------------------------------------------------


async def test_ollama_embed(client: TestClient, engine: Engine) -> None:
    want = engine.embed(DOCS[:2])
    for model in ("minilm", "minilm:latest", "sentence-transformers/all-MiniLM-L6-v2"):
        r = await client.post(
            "/api/embed",
            json={"model": model, "input": DOCS[:2], "keep_alive": "5m", "options": {}},
        )
        body = await r.json()
        assert r.status == 200 and close(body["embeddings"], want.vectors)
        assert body["prompt_eval_count"] == want.prompt_tokens
        assert body["model"] == engine.info.display_name and body["total_duration"] > 0
        assert "load_duration" in body
    r = await client.post("/api/embed", json={"model": "minilm", "input": DOCS[0]})
    assert close((await r.json())["embeddings"], want.vectors[:1])
    r = await client.post("/api/embed", json={"model": "minilm", "input": ""})  # a preload
    assert r.status == 200 and (await r.json())["embeddings"] == []


async def test_ollama_legacy_embeddings(client: TestClient, engine: Engine) -> None:
    r = await client.post("/api/embeddings", json={"model": "minilm", "prompt": DOCS[0]})
    assert r.status == 200 and close(
        (await r.json())["embedding"], engine.embed(DOCS[:1]).vectors[0]
    )
    r = await client.post("/api/embeddings", json={"model": "minilm", "prompt": ""})
    assert await r.json() == {"embedding": []}


async def test_ollama_unknown_model(client: TestClient) -> None:
    for path in ("/api/embed", "/api/embeddings"):
        r = await client.post(path, json={"model": "nomic-embed-text", "input": "x", "prompt": "x"})
        body = await r.json()
        assert r.status == 404 and set(body) == {"error"}
        # Ollama's own wording first (clients match it), then the names that would work.
        assert body["error"].startswith("model 'nomic-embed-text' not found; this server has ")
        assert '"sentence-transformers/all-MiniLM-L6-v2"' in body["error"]
        assert '"localrank-embed"' in body["error"]


# --- errors, every dialect --------------------------------------------------------------------


def _openai_shape(b: Any) -> bool:
    return set(b) == {"error"} and set(b["error"]) == {"message", "type", "param", "code"}


SHAPES: dict[str, Callable[[Any], bool]] = {
    "openai": _openai_shape,
    "cohere": lambda b: isinstance(b.get("message"), str),
    "tei": lambda b: set(b) == {"error", "error_type"} and isinstance(b["error"], str),
    "ollama": lambda b: set(b) == {"error"} and isinstance(b["error"], str),
    "native": lambda b: set(b) == {"detail", "code"},
}
ALL_KINDS = frozenset(
    {
        "malformed",
        "wrong_type",
        "empty",
        "too_many",
        "too_long",
        "dims",
        "model",
        "body_size",
        "content_type",
    }
)


@dataclass(frozen=True)
class Endpoint:
    path: str
    dialect: str
    body: Callable[[Any], dict[str, Any]]  # a valid body around a list of texts
    kinds: frozenset[str] = field(default=ALL_KINDS)


ENDPOINTS = [
    Endpoint("/v1/embeddings", "openai", lambda t: {"input": t}),
    Endpoint("/embeddings", "openai", lambda t: {"texts": t}, ALL_KINDS - {"too_long"}),
    Endpoint(
        "/v1/rerank", "cohere", lambda t: {"query": "q", "documents": t}, ALL_KINDS - {"dims"}
    ),
    Endpoint(
        "/v2/rerank", "cohere", lambda t: {"query": "q", "documents": t}, ALL_KINDS - {"dims"}
    ),
    Endpoint("/embed", "tei", lambda t: {"inputs": t}, ALL_KINDS - {"model"}),
    Endpoint("/rerank", "tei", lambda t: {"query": "q", "texts": t}, ALL_KINDS - {"model", "dims"}),
    Endpoint(
        "/tokenize", "tei", lambda t: {"inputs": t}, ALL_KINDS - {"model", "dims", "too_long"}
    ),
    Endpoint(
        "/api/embed", "ollama", lambda t: {"model": "minilm", "input": t}, ALL_KINDS - {"empty"}
    ),  # empty input is Ollama's preload: 200
    Endpoint(
        "/api/embeddings",
        "ollama",
        lambda t: {"model": "minilm", "prompt": t[0] if isinstance(t, list) and t else t},
        ALL_KINDS - {"empty", "too_many", "dims"},
    ),
    Endpoint("/api/v1/embed", "native", lambda t: {"texts": t}, ALL_KINDS - {"model"}),
    Endpoint(
        "/api/v1/rerank",
        "native",
        lambda t: {"query": "q", "passages": t},
        ALL_KINDS - {"model", "dims"},
    ),
]


def _request(ep: Endpoint, kind: str) -> tuple[int, bytes, str]:
    """(expected status, raw body, content type) for one kind of bad input."""
    ok = ep.body(["a text"])
    cases: dict[str, tuple[int, Any]] = {
        "malformed": (400, b'{"input": ['),
        "wrong_type": (422, ep.body(5)),
        "empty": (422, ep.body([])),
        "too_many": (413, ep.body(["t"] * (MAX_INPUTS + 1))),
        "too_long": (413, {**ep.body([LONG]), "truncate": False}),
        "dims": (422, {**ok, "dimensions": 100_000}),
        "model": (404, {**ok, "model": "no-such-model"}),
        "body_size": (413, ep.body(["x" * (MAX_BODY + 10)])),
        "content_type": (415, b"hello"),
    }
    status, body = cases[kind]
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    # No dialect takes XML (Ollama's takes text/plain: fetch() labels a string body so).
    return status, raw, "application/xml" if kind == "content_type" else "application/json"


@pytest.mark.parametrize(
    ("ep", "kind"),
    [
        pytest.param(ep, kind, id=f"{ep.path}-{kind}")
        for ep in ENDPOINTS
        for kind in sorted(ep.kinds)
    ],
)
async def test_bad_input_in_dialect_shape(client: TestClient, ep: Endpoint, kind: str) -> None:
    status, raw, content_type = _request(ep, kind)
    r = await client.post(ep.path, data=raw, headers={"Content-Type": content_type})
    body = await r.json()
    assert r.status == status, body
    assert SHAPES[ep.dialect](body), body


async def test_dimensions_too_small_and_not_int(client: TestClient) -> None:
    for dims in (1, 0, -5, "64", True):
        r = await client.post("/v1/embeddings", json={"input": "x", "dimensions": dims})
        assert r.status == 422, dims
        assert (await r.json())["error"]["param"] == "dimensions"


MUTATIONS: list[Any] = [
    {},
    {"input": None},
    {"input": {"a": 1}},
    {"input": [1.5]},
    {"input": [[1, "a"]]},
    {"input": [[-1]]},
    {"input": [[]]},
    {"input": [None]},
    {"inputs": [None]},
    {"inputs": [[1, 2]]},
    {"query": 5},
    {"query": ""},
    {"documents": [None]},
    {"documents": [{"text": 5}]},
    {"documents": [{"title": "t"}]},
    {"rank_fields": []},
    {"rank_fields": ["missing"]},
    {"top_n": -1},
    {"top_n": "3"},
    {"top_k": 0},
    {"texts": "abc"},
    {"texts": [1, 2]},
    {"passages": [None]},
    {"passages": None},
    {"documents": None, "passages": None},
    {"model": 5},
    {"model": ""},
    {"dimensions": "x"},
    {"dimensions": 1.5},
    {"encoding_format": "hex"},
    {"input_type": "weird"},
    {"input_type": "document", "instruction": "x"},
    {"prompt_name": 3},
    {"truncate": "no"},
    {"return_documents": "yes"},
    {"max_tokens_per_doc": 0},
    {"add_special_tokens": 1},
    {"options": 5},
    {"prompt": ["x"]},
    {"normalize": "x"},
    {"raw_scores": 1},
    {"truncation_direction": 5},
]


@pytest.mark.parametrize("ep", ENDPOINTS, ids=lambda ep: ep.path)
async def test_never_a_500(client: TestClient, ep: Endpoint) -> None:
    for raw in ("[]", '"str"', "5", "null"):
        r = await client.post(ep.path, data=raw, headers={"Content-Type": "application/json"})
        assert r.status == 400 and SHAPES[ep.dialect](await r.json()), raw
    for mutation in MUTATIONS:
        body = {**ep.body(["a text"]), **mutation}
        r = await client.post(ep.path, json=body)
        assert r.status < 500, (mutation, await r.text())
        if r.status >= 400:
            assert SHAPES[ep.dialect](await r.json()), mutation


@pytest.mark.parametrize("ep", ENDPOINTS, ids=lambda ep: ep.path)
async def test_deeply_nested_json_is_a_400(client: TestClient, ep: Endpoint) -> None:
    raw = "[" * 20_000 + "]" * 20_000  # json.loads raises RecursionError, not JSONDecodeError
    r = await client.post(ep.path, data=raw, headers={"Content-Type": "application/json"})
    assert r.status == 400 and SHAPES[ep.dialect](await r.json())


@pytest.mark.parametrize(
    "path,body",
    [
        ("/v1/embeddings", '{"input": "a \\ud800 b"}'),
        ("/api/v1/rerank", '{"query": "q", "documents": ["x \\udfff"]}'),
        ("/v1/search", '{"collection": "none", "query": "\\ud800"}'),
    ],
)
async def test_lone_surrogate_is_a_clear_4xx(client: TestClient, path: str, body: str) -> None:
    r = await client.post(path, data=body, headers={"Content-Type": "application/json"})
    assert 400 <= r.status < 500


async def test_unknown_route_and_method(client: TestClient) -> None:
    r = await client.get("/v1/nothing")
    assert r.status == 404 and (await r.json())["error"]
    r = await client.get("/v1/rerank")
    assert r.status == 405 and SHAPES["cohere"](await r.json())


# --- operations -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/health", "/health/"])
async def test_health_ready(client: TestClient, engine: Engine, path: str) -> None:
    r = await client.get(path)
    body = await r.json()
    assert r.status == 200 and body["status"] == "ok" and body["store"] == {"status": "ok"}
    assert (body["backend"], body["device"], body["dtype"], body["dim"]) == (
        "torch",
        "cpu",
        "float32",
        384,
    )
    assert body["model"] == engine.info.display_name


async def test_health_503_while_loading(tmp_path: Path, minilm: Path) -> None:
    release = threading.Event()

    def loader(_: Settings) -> Engine:
        release.wait(30)
        raise ModelError("test loader: never loads")

    app = make_app(settings_for(minilm, tmp_path), loader=loader)
    try:
        async with TestClient(TestServer(app)) as c:
            r = await c.get("/health")
            assert r.status == 503 and (await r.json())["status"] == "loading"
            r = await c.post("/v1/embeddings", json={"input": "x"})
            assert r.status == 503 and _openai_shape(await r.json())
            r = await c.get("/info")
            assert r.status == 503 and (await r.json())["error_type"] == "Unhealthy"
            r = await c.post("/api/embed", json={"input": "x"})
            assert r.status == 503 and set(await r.json()) == {"error"}
            release.set()
            await app[STATE_KEY].ready.wait()
            r = await c.get("/health")
            body = await r.json()
            assert r.status == 503 and body["status"] == "error" and "never loads" in body["error"]
    finally:
        release.set()


def _metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    prefix = f"{name}{{{want}}} " if labels else f"{name} "
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    return 0.0


async def test_metrics(client: TestClient) -> None:
    text = "a sentence only this test embeds"
    before = await (await client.get("/metrics")).text()
    for _ in range(2):
        assert (await client.post("/api/embed", json={"input": [text]})).status == 200
    r = await client.get("/metrics")
    after = await r.text()
    assert r.status == 200 and r.content_type == "text/plain"
    route = {"route": "/api/embed", "status": "200"}
    assert (
        _metric(after, "localrank_requests_total", **route)
        - _metric(before, "localrank_requests_total", **route)
    ) == 2
    assert (
        _metric(after, "localrank_cache_hits_total") - _metric(before, "localrank_cache_hits_total")
    ) >= 1
    assert _metric(after, "localrank_batch_size_count") >= 1
    assert 'localrank_request_seconds_count{route="/api/embed"}' in after
    assert "localrank_queue_depth" in after


async def test_metrics_say_how_full_passes_were_and_how_long_requests_waited(
    client: TestClient,
) -> None:
    before = await (await client.get("/metrics")).text()
    texts = [f"the {k}th text only the fill test embeds" for k in range(3)]
    assert (await client.post("/api/embed", json={"input": texts})).status == 200
    after = await (await client.get("/metrics")).text()

    def grew(name: str, **labels: str) -> float:
        return _metric(after, name, **labels) - _metric(before, name, **labels)

    passes = grew("localrank_batch_fill_tokens_count")
    assert passes >= 1 and grew("localrank_batch_fill_rows_count") == passes
    # Three rows in however many passes, over the row limit the daemon runs with (the sums are
    # printed with six significant digits).
    max_rows = client.server.app[STATE_KEY].settings.max_batch_size  # type: ignore[union-attr]
    assert grew("localrank_batch_fill_rows_sum") == pytest.approx(3 / max_rows, rel=1e-3)
    assert 0 < grew("localrank_batch_fill_tokens_sum") <= passes
    assert grew("localrank_queue_wait_seconds_count", **{"class": "short"}) == 1
    assert grew("localrank_queue_wait_seconds_sum", **{"class": "short"}) >= 0
    assert "# TYPE localrank_passes_in_pauses_total counter" in after


async def test_openapi_covers_every_route(client: TestClient) -> None:
    spec = await (await client.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.1")
    app = client.server.app
    assert app is not None
    seen = 0
    for route in app.router.routes():
        if route.method == "HEAD" or route.resource is None:
            continue
        path = route.resource.canonical
        op = spec["paths"].get(path, {}).get(route.method.lower())
        assert op is not None, f"{route.method} {path} missing from /openapi.json"
        assert "x-undocumented" not in op, f"{route.method} {path} has no catalogue entry"
        assert op["summary"] and op["responses"]
        if route.method in ("POST", "PUT") and path.rstrip("/") not in (
            "/v1/compact",
            "/v1/jobs/{job_id}/retry",
        ):
            assert "requestBody" in op, f"{route.method} {path} documents no body"
        seen += 1
    for prefix in (
        "/v1/collections",
        "/v1/search",
        "/v1/jobs",
        "/v1/rerank",
        "/api/embed",
        "/tokenize",
        "/docs",
    ):
        assert any(p.startswith(prefix) for p in spec["paths"]), prefix
    assert seen == sum(len(item) for item in spec["paths"].values())
    ids = [op["operationId"] for item in spec["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))
    named = spec["paths"]["/v1/collections/{name}/documents/{doc_id}"]["get"]["parameters"]
    assert {p["name"] for p in named} == {"name", "doc_id"}


async def test_docs_page_offline(client: TestClient) -> None:
    r = await client.get("/docs")
    html = await r.text()
    assert r.status == 200 and r.content_type == "text/html"
    assert "default-src 'none'" in r.headers["Content-Security-Policy"]
    assert "<script" not in html and "http://" not in html and "https://" not in html
    spec = await (await client.get("/openapi.json")).json()
    for path in spec["paths"]:
        assert f"<code>{path}</code>" in html, path
    assert "Example request" in html and "return_documents" in html


# --- query vs document (the tiny Qwen3 has an instruction template) --------------------------


async def test_query_mode_and_instructions(tiny_qwen3: Path, tmp_path: Path) -> None:
    # float32: served and direct vectors come from differently composed batches, which in
    # bfloat16 (auto on a CPU that has it) differ in the last bits.
    settings = settings_for(tiny_qwen3, tmp_path, dtype="float32")
    ref = load_engine(settings)
    q, task = "what is a cat?", "Find the definition"
    query_vec = ref.embed([q], query=True).vectors[0]
    doc_vec = ref.embed([q]).vectors[0]
    task_vec = ref.embed([q], query=True, instruction=task).vectors[0]
    assert not close(query_vec, doc_vec, atol=1e-3)
    app = make_app(settings)
    async with TestClient(TestServer(app)) as c:
        await app[STATE_KEY].ready.wait()

        async def first(path: str, body: dict[str, Any]) -> Any:
            r = await c.post(path, json=body)
            assert r.status == 200, await r.text()
            out = await r.json()
            return {
                "/v1/embeddings": lambda: out["data"][0]["embedding"],
                "/embed": lambda: out[0],
                "/api/v1/embed": lambda: out["vectors"][0],
                "/api/embed": lambda: out["embeddings"][0],
            }[path]()

        assert close(await first("/v1/embeddings", {"input": q}), doc_vec)  # default: document
        assert close(await first("/v1/embeddings", {"input": q, "input_type": "query"}), query_vec)
        assert close(await first("/v1/embeddings", {"input": q, "instruction": task}), task_vec)
        assert close(await first("/embed", {"inputs": q, "prompt_name": "query"}), query_vec)
        assert close(
            await first("/api/v1/embed", {"texts": [q], "input_type": "search_query"}), query_vec
        )
        assert close(
            await first("/api/embed", {"input": q, "input_type": "search_document"}), doc_vec
        )
        scores, _ = ref.rerank(q, DOCS)
        r = await c.post("/v2/rerank", json={"query": q, "documents": DOCS})
        results = (await r.json())["results"]
        assert [x["index"] for x in results] == sorted(range(len(DOCS)), key=lambda i: -scores[i])
        assert close([x["relevance_score"] for x in results], np.sort(scores)[::-1])
        scores, _ = ref.rerank(q, DOCS, instruction=task)
        r = await c.post("/rerank", json={"query": q, "texts": DOCS, "instruction": task})
        assert close([x["score"] for x in await r.json()], np.sort(scores)[::-1])
    ref.close()
