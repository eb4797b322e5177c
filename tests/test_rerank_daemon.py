"""The cross-encoder in the daemon (the real `make_app`, the real tiny Qwen3-Reranker and BERT
cross-encoder; a hashed bag-of-tokens embedder for the embedding side): every rerank dialect
uses it, /v1/search's rerank stage uses it, lazy load, idle unload and reload, what /health,
/info and /v1/models report, and bad input as a clear 4xx in each dialect's shape."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web
from fake_embedder import hash_loader
from reference import cross_encoder_reference, qwen3_reranker_reference

from localrank.config import load_settings
from localrank.serve.app import make_app
from localrank.serve.state import STATE_KEY

QUERY = "how do I reset my password"
DOCS = [
    "The quarterly report shows revenue grew by twelve percent.",
    "To reset a forgotten password, open the sign-in page and choose Forgot password.",
    "Reset links expire after one hour; ask an administrator if none arrives.",
]
TOL = 1e-4


def daemon(home: Path, minilm: Path, **settings: object) -> web.Application:
    flags = {"home": str(home), "dtype": "float32", **settings}
    return make_app(load_settings(flags, environ={}), loader=hash_loader(minilm))


async def started(aiohttp_client, app: web.Application):  # type: ignore[no-untyped-def]
    client = await aiohttp_client(app)
    await app[STATE_KEY].ready.wait()
    assert app[STATE_KEY].models is not None, app[STATE_KEY].load_error
    return client


async def health(client) -> dict:  # type: ignore[no-untyped-def]
    r = await client.get("/health")
    assert r.status == 200
    return await r.json()


async def test_v2_rerank_uses_the_cross_encoder_loaded_lazily(
    aiohttp_client, tmp_path, minilm, tiny_reranker
):  # type: ignore[no-untyped-def]
    client = await started(
        aiohttp_client, daemon(tmp_path / "h", minilm, reranker=str(tiny_reranker))
    )
    before = await health(client)
    assert before["rerank_method"] == "cross-encoder"
    assert before["reranker"]["configured"] == str(tiny_reranker)
    assert before["reranker"]["loaded"] is False  # lazily: nothing asked for it yet

    r = await client.post(
        "/v2/rerank", json={"query": QUERY, "documents": DOCS, "model": "no-such-model"}
    )
    assert r.status == 404
    assert (await health(client))["reranker"]["loaded"] is False
    r = await client.post(
        "/v2/rerank",
        json={"query": QUERY, "documents": DOCS, "model": "tiny-qwen3-reranker"},
    )
    assert r.status == 200, await r.text()
    body = await r.json()
    expected = qwen3_reranker_reference(tiny_reranker, [(QUERY, d) for d in DOCS])
    got = {item["index"]: item["relevance_score"] for item in body["results"]}
    assert np.abs(np.array([got[i] for i in range(3)]) - expected).max() < TOL
    scores = [item["relevance_score"] for item in body["results"]]
    assert scores == sorted(scores, reverse=True)

    after = await health(client)
    assert after["reranker"]["loaded"] is True and after["reranker"]["loads"] == 1
    assert after["reranker"]["family"] == "qwen3-reranker"

    # TEI's raw_scores: the logit, whose sigmoid is the score.
    r = await client.post("/rerank", json={"query": QUERY, "texts": DOCS, "raw_scores": True})
    raw = {item["index"]: item["score"] for item in await r.json()}
    logits = np.array([raw[i] for i in range(3)])
    assert np.abs(1 / (1 + np.exp(-logits)) - expected).max() < TOL
    # The native route says which method scored.
    r = await client.post("/api/v1/rerank", json={"query": QUERY, "documents": DOCS})
    native = await r.json()
    assert native["method"] == "cross-encoder"
    # /info and /v1/models report it too.
    info = await (await client.get("/info")).json()
    assert info["rerank_method"] == "cross-encoder" and info["reranker"]["loaded"] is True
    models = await (await client.get("/v1/models")).json()
    listed = [m for m in models["data"] if m.get("kind") == "reranker"]
    assert [m["id"] for m in listed] == [str(tiny_reranker)] and listed[0]["loaded"] is True


async def test_idle_unload_and_reload(aiohttp_client, tmp_path, minilm, tiny_cross_encoder):  # type: ignore[no-untyped-def]
    client = await started(
        aiohttp_client,
        daemon(
            tmp_path / "h", minilm, reranker=str(tiny_cross_encoder), reranker_idle_unload_s=0.3
        ),
    )
    expected = cross_encoder_reference(tiny_cross_encoder, [(QUERY, d) for d in DOCS])

    async def scores() -> np.ndarray:
        r = await client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS})
        assert r.status == 200, await r.text()
        got = {i["index"]: i["relevance_score"] for i in (await r.json())["results"]}
        return np.array([got[i] for i in range(len(DOCS))])

    assert np.abs(await scores() - expected).max() < TOL
    assert (await health(client))["reranker"]["loaded"] is True
    await asyncio.sleep(1.0)
    status = (await health(client))["reranker"]
    assert status["loaded"] is False and status["unloads"] == 1
    assert np.abs(await scores() - expected).max() < TOL  # reloaded on demand
    status = (await health(client))["reranker"]
    assert status["loaded"] is True and status["loads"] == 2


async def test_preload_reranker_loads_at_startup(
    aiohttp_client, tmp_path, minilm, tiny_cross_encoder
):  # type: ignore[no-untyped-def]
    app = daemon(tmp_path / "h", minilm, reranker=str(tiny_cross_encoder), preload_reranker=True)
    client = await started(aiohttp_client, app)
    await app[STATE_KEY].preloading  # type: ignore[misc]
    assert (await health(client))["reranker"]["loaded"] is True


async def test_without_a_reranker_everything_is_as_before(aiohttp_client, tmp_path, minilm):  # type: ignore[no-untyped-def]
    client = await started(aiohttp_client, daemon(tmp_path / "h", minilm))
    h = await health(client)
    assert h["rerank_method"].startswith("bi-encoder") and h["reranker"]["configured"] is None
    r = await client.post("/v2/rerank", json={"query": QUERY, "documents": DOCS})
    assert r.status == 200
    # Asking for the cross-encoder without one configured: 422 in the native shape.
    r = await client.post(
        "/api/v1/rerank", json={"query": QUERY, "documents": DOCS, "method": "cross-encoder"}
    )
    assert r.status == 422
    body = await r.json()
    assert "no reranker is configured" in body["detail"]


async def test_bad_input_is_a_clear_4xx(aiohttp_client, tmp_path, minilm, tiny_reranker):  # type: ignore[no-untyped-def]
    client = await started(
        aiohttp_client, daemon(tmp_path / "h", minilm, reranker=str(tiny_reranker))
    )
    cases = [
        ("/v2/rerank", {"query": QUERY, "documents": []}, "message"),
        ("/v2/rerank", {"documents": DOCS}, "message"),
        ("/v2/rerank", {"query": "  ", "documents": DOCS}, "message"),
        ("/rerank", {"query": QUERY, "texts": []}, "error"),
        ("/api/v1/rerank", {"query": QUERY, "documents": [""] * 0}, "detail"),
        ("/api/v1/rerank", {"query": QUERY, "documents": [1, 2]}, "detail"),
        ("/api/v1/rerank", {"query": QUERY, "documents": DOCS, "method": "magic"}, "detail"),
    ]
    for path, body, key in cases:
        r = await client.post(path, json=body)
        assert r.status == 422, (path, body, r.status, await r.text())
        assert key in await r.json()


@pytest.mark.parametrize(
    ("path", "body", "key"),
    [
        ("/v2/rerank", {"query": QUERY, "documents": DOCS}, "message"),
        ("/rerank", {"query": QUERY, "texts": DOCS}, "error"),
        ("/api/v1/rerank", {"query": QUERY, "documents": DOCS}, "detail"),
    ],
)
async def test_a_reranker_folder_with_missing_files_is_a_424(
    aiohttp_client, tmp_path, minilm, tiny_reranker, path, body, key
):  # type: ignore[no-untyped-def]
    broken = tmp_path / "broken-reranker"
    shutil.copytree(tiny_reranker, broken)
    (broken / "model.safetensors").unlink()
    client = await started(aiohttp_client, daemon(tmp_path / "h", minilm, reranker=str(broken)))
    r = await client.post(path, json=body)
    assert r.status == 424, await r.text()
    message = (await r.json())[key]
    assert "cannot be loaded" in message and "safetensors" in message
    status = (await health(client))["reranker"]
    assert status["loaded"] is False and "safetensors" in status["error"]


async def test_search_rerank_uses_the_cross_encoder(
    aiohttp_client, tmp_path, minilm, tiny_reranker
):  # type: ignore[no-untyped-def]
    client = await started(
        aiohttp_client, daemon(tmp_path / "h", minilm, reranker=str(tiny_reranker))
    )
    assert (await client.post("/v1/collections", json={"name": "kb"})).status == 201
    docs = [{"id": f"d{i}", "text": t} for i, t in enumerate(DOCS)]
    r = await client.post("/v1/collections/kb/documents", json={"documents": docs})
    assert r.status == 200, await r.text()
    r = await client.post(
        "/v1/search", json={"collection": "kb", "query": "reset password", "rerank": True}
    )
    assert r.status == 200, await r.text()
    body = await r.json()
    assert body["rerank_method"] == "cross-encoder"
    assert body["timings_ms"]["rerank"] > 0
    texts = [x["text"] for x in body["results"]]
    expected = qwen3_reranker_reference(tiny_reranker, [("reset password", t) for t in texts])
    got = np.array([x["score"] for x in body["results"]])
    assert np.abs(got - expected).max() < 1e-4
    assert list(got) == sorted(got, reverse=True)
    # Without rerank: retrieval scores, no cross-encoder.
    r = await client.post(
        "/v1/search", json={"collection": "kb", "query": "reset password", "rerank": False}
    )
    assert (await r.json())["rerank_method"] is None
