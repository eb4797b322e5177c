"""The official client libraries (openai, cohere, ollama, huggingface_hub) against a live
`localrank serve`.

The main daemon serves a copy of all-MiniLM-L6-v2 at a path that says nothing (recognised by its
content) with `--served-model-name my-embedder`; a second one runs on the default settings (here:
the offline fallback). Vectors must equal the engine's direct output within 1e-5 and rerank
orders the engine's cosine order. The last test stops the main daemon with SIGTERM while a
request is in flight: the request completes and the process exits 0.
"""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import cohere
import httpx
import numpy as np
import ollama
import openai
import pytest
from daemons import LiveDaemon, running
from huggingface_hub import InferenceClient

from localrank.config import load_settings
from localrank.engine.core import Engine
from localrank.engine.load import load_engine
from localrank.ops import doctor

DOCS = [
    "Berlin is the capital of Germany.",
    "Paris is the capital of France.",
    "Bananas are yellow.",
    "The Eiffel Tower stands in Paris.",
]
QUERY = "What is the capital of France?"
MODEL = "all-minilm-l6-v2"
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
SERVED = "my-embedder"


@pytest.fixture(scope="module")
def daemon(minilm: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveDaemon]:
    """`localrank serve --model <folder> --served-model-name my-embedder`, the folder a copy of
    all-MiniLM-L6-v2 somewhere else."""
    home = tmp_path_factory.mktemp("daemon-home")
    copy = shutil.copytree(minilm, home / "models" / "copied-model")
    with running(
        home, None, "--model", str(copy), "--backend", "cpu", "--served-model-name", SERVED
    ) as live:
        yield live


@pytest.fixture(scope="module")
def default_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveDaemon]:
    """`localrank serve` with the default settings."""
    with running(tmp_path_factory.mktemp("default-home"), None) as live:
        yield live


@pytest.fixture(scope="module")
def engine(minilm: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    home = tmp_path_factory.mktemp("engine-home")
    e = load_engine(
        load_settings(
            {"model": str(minilm), "backend": "cpu", "dtype": "float32", "home": str(home)},
            environ={},
        )
    )
    yield e
    e.close()


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDKs' httpx honours proxy variables; the daemon is on loopback."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def cosine_order(engine: Engine, query: str, docs: list[str]) -> tuple[list[int], np.ndarray]:
    q = engine.embed([query], query=True).vectors[0]
    scores = (engine.embed(docs).vectors @ q + 1.0) / 2.0
    return sorted(range(len(docs)), key=lambda i: -scores[i]), scores


def test_openai_sdk_default_encoding(daemon: LiveDaemon, engine: Engine) -> None:
    sent: list[dict[str, object]] = []
    http_client = httpx.Client(
        event_hooks={"request": [lambda r: sent.append(json.loads(r.content))]}
    )
    client = openai.OpenAI(base_url=f"{daemon.url}/v1", api_key="x", http_client=http_client)
    result = client.embeddings.create(model=MODEL, input=DOCS)
    assert sent[-1].get("encoding_format") == "base64"  # the SDK's default, decoded by it
    want = engine.embed(DOCS)
    got = np.asarray([d.embedding for d in result.data], dtype=np.float32)
    assert np.abs(got - want.vectors).max() < 1e-5
    assert result.usage.prompt_tokens == want.prompt_tokens
    assert result.model == engine.info.display_name
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="text-embedding-3-small", input="x")
    with pytest.raises(openai.UnprocessableEntityError) as err:
        client.embeddings.create(model=MODEL, input=[])
    assert err.value.body is not None


def test_cohere_client_v2_rerank(daemon: LiveDaemon, engine: Engine) -> None:
    client = cohere.ClientV2(api_key="x", base_url=daemon.url)
    result = client.rerank(model=MODEL, query=QUERY, documents=DOCS, top_n=3)
    order, scores = cosine_order(engine, QUERY, DOCS)
    assert [r.index for r in result.results] == order[:3]
    got = np.asarray([r.relevance_score for r in result.results])
    assert np.abs(got - scores[order[:3]]).max() < 1e-5
    assert result.meta is not None and result.meta.billed_units is not None
    assert result.meta.billed_units.search_units == 1
    with pytest.raises(cohere.NotFoundError):
        client.rerank(model="rerank-v3.5", query=QUERY, documents=DOCS)


def test_ollama_client_embed(daemon: LiveDaemon, engine: Engine) -> None:
    client = ollama.Client(host=daemon.url)
    result = client.embed(model=MODEL, input=DOCS)
    want = engine.embed(DOCS)
    assert np.abs(np.asarray(result.embeddings, dtype=np.float32) - want.vectors).max() < 1e-5
    assert result.prompt_eval_count == want.prompt_tokens
    legacy = client.embeddings(model=MODEL, prompt=DOCS[0])
    assert np.abs(np.asarray(legacy.embedding) - want.vectors[0]).max() < 1e-5
    with pytest.raises(ollama.ResponseError) as err:
        client.embed(model="nomic-embed-text", input="x")
    assert err.value.status_code == 404
    assert err.value.error.startswith("model 'nomic-embed-text' not found")


def test_huggingface_inference_client(daemon: LiveDaemon, engine: Engine) -> None:
    """InferenceClient(model=URL) posts to the URL itself, as for a TEI endpoint (LangChain's
    HuggingFaceEndpointEmbeddings is this client)."""
    client = InferenceClient(model=daemon.url)
    one = client.feature_extraction(DOCS[0])
    assert one.shape == (1, 384) and np.abs(one - engine.embed(DOCS[:1]).vectors).max() < 1e-5
    many = client.feature_extraction(DOCS)
    assert np.abs(many - engine.embed(DOCS).vectors).max() < 1e-5
    scores = client.sentence_similarity(QUERY, DOCS)
    vectors = engine.embed([QUERY, *DOCS]).vectors
    assert np.abs(np.asarray(scores) - vectors[1:] @ vectors[0]).max() < 1e-5


def test_openai_models(daemon: LiveDaemon) -> None:
    client = openai.OpenAI(base_url=f"{daemon.url}/v1", api_key="x")
    ids = [m.id for m in client.models.list()]
    assert ids[:2] == [SERVED, MINILM_ID] and "localrank-embed" in ids
    for name in (SERVED, MINILM_ID):  # the SDK sends the slash as %2F
        assert client.models.retrieve(name).id == name
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("text-embedding-3-small")
    result = client.embeddings.create(model=SERVED, input="hello")
    assert len(result.data[0].embedding) == 384


def test_cohere_client_v2_embed(daemon: LiveDaemon, engine: Engine) -> None:
    client = cohere.ClientV2(api_key="x", base_url=daemon.url)
    result = client.embed(
        model=SERVED, texts=DOCS, input_type="search_document", embedding_types=["float"]
    )
    assert result.embeddings.float_ is not None
    got = np.asarray(result.embeddings.float_, dtype=np.float32)
    assert np.abs(got - engine.embed(DOCS).vectors).max() < 1e-5


def test_ollama_client_list_show_ps(daemon: LiveDaemon) -> None:
    client = ollama.Client(host=daemon.url)
    names = [m.model for m in client.list().models]
    assert names[:2] == [SERVED, MINILM_ID]
    shown = client.show(f"{SERVED}:latest")
    assert shown.modelinfo is not None
    assert shown.modelinfo["bert.embedding_length"] == 384
    assert shown.modelinfo["bert.context_length"] == 256
    assert shown.details is not None and shown.details.family == "bert"
    assert shown.capabilities == ["embedding"]
    assert [m.model for m in client.ps().models] == [SERVED]
    with pytest.raises(ollama.ResponseError) as err:
        client.show("nomic-embed-text")
    assert err.value.status_code == 404


def test_every_client_on_the_default_settings(default_daemon: LiveDaemon, engine: Engine) -> None:
    """No model named, no Qwen3 on this machine: the offline fallback serves, under its own
    names and localrank-embed, and every client works against it."""
    url = default_daemon.url
    want = engine.embed(DOCS)
    oai = openai.OpenAI(base_url=f"{url}/v1", api_key="x")
    ids = [m.id for m in oai.models.list()]
    assert (
        ids[0] == MINILM_ID and "localrank-embed" in ids and "Qwen/Qwen3-Embedding-0.6B" not in ids
    )
    got = [d.embedding for d in oai.embeddings.create(model="localrank-embed", input=DOCS).data]
    assert np.abs(np.asarray(got) - want.vectors).max() < 1e-5
    with pytest.raises(openai.NotFoundError):  # never silently a different model
        oai.embeddings.create(model="Qwen/Qwen3-Embedding-0.6B", input="x")
    ol = ollama.Client(host=url)
    assert "localrank-embed" in [m.model for m in ol.list().models]
    assert ol.show("localrank-embed").modelinfo["bert.embedding_length"] == 384
    embedded = ol.embed(model="all-minilm", input=DOCS).embeddings
    assert np.abs(np.asarray(embedded) - want.vectors).max() < 1e-5
    hf = InferenceClient(model=url).feature_extraction(DOCS)
    assert np.abs(hf - want.vectors).max() < 1e-5
    ranked = cohere.ClientV2(api_key="x", base_url=url).rerank(
        model="localrank-embed", query=QUERY, documents=DOCS
    )
    assert [r.index for r in ranked.results] == cosine_order(engine, QUERY, DOCS)[0]
    health = json.loads(httpx.get(f"{url}/health").text)
    assert health["fallback"] is True and health["names"] == ids
    # `localrank doctor` on that machine says so.
    settings = load_settings(
        {"home": str(default_daemon.home), "port": default_daemon.port}, environ={}
    )
    check = doctor.check_running_daemon(settings)
    assert check is not None and check.status == "warn", check
    assert f"offline fallback {MINILM_ID}, not Qwen/Qwen3-Embedding-0.6B" in check.detail


def test_sigterm_drains_in_flight_request_and_exits_0(daemon: LiveDaemon) -> None:
    """Runs last: the daemon finishes the request it is serving, then exits 0 within 10 s."""
    texts = [f"sentence number {i} about drains and graceful shutdowns" for i in range(200)]
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
    conn.request(
        "POST",
        "/v1/embeddings",
        body=json.dumps({"input": texts}),
        headers={"Content-Type": "application/json"},
    )
    time.sleep(0.2)  # the request is in the daemon's hands
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGTERM)
    response = conn.getresponse()
    body = json.loads(response.read())
    assert response.status == 200 and len(body["data"]) == len(texts)
    assert daemon.proc.wait(10) == 0, daemon.log_tail()
