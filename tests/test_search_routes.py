"""The search API on the daemon's real app (`make_app`: middlewares, error shapes, the
collections context and the adapter from the scheduler to the collections layer), with a hashed
bag-of-tokens backend standing in for the model's forward pass."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp import web
from fake_embedder import hash_loader

from localrank.config import load_settings
from localrank.serve.app import make_app
from localrank.serve.state import COLLECTIONS_KEY, STATE_KEY
from localrank.store import SQLiteStore


def daemon(home: Path, minilm: Path, **model: object) -> web.Application:
    settings = load_settings({"home": str(home)}, environ={})
    return make_app(settings, loader=hash_loader(minilm, **model))


async def started(aiohttp_client, app: web.Application):  # type: ignore[no-untyped-def]
    client = await aiohttp_client(app)
    await app[STATE_KEY].ready.wait()
    assert app[STATE_KEY].models is not None, app[STATE_KEY].load_error
    return client


@pytest.fixture
async def client(aiohttp_client, tmp_path: Path, minilm: Path):  # type: ignore[no-untyped-def]
    return await started(aiohttp_client, daemon(tmp_path / "home", minilm))


DOCS = [
    {
        "id": "a/one.md",
        "text": "# One\n\nThe cat sat on the mat.",
        "metadata": {"lang": "en"},
        "source": "one.md",
    },
    {"id": "two", "text": "Le chat est sur le tapis.", "metadata": {"lang": "fr"}},
]


async def test_collection_documents_search_roundtrip(client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    r = await client.post("/v1/collections", json={"name": "notes"})
    assert r.status == 201
    body = await r.json()
    assert (body["name"], body["model"], body["dim"]) == ("notes", "fake/hash-bow", 64)
    assert (tmp_path / "home" / "data" / "localrank.db").exists()
    assert (await client.post("/v1/collections", json={"name": "notes"})).status == 409

    r = await client.post("/v1/collections/notes/documents", json={"documents": DOCS})
    assert r.status == 200
    body = await r.json()
    assert body["chunks"] == 2 and [d["status"] for d in body["documents"]] == [
        "created",
        "created",
    ]

    r = await client.get("/v1/collections")
    assert (await r.json())["collections"][0]["documents"] == 2
    r = await client.get("/v1/collections/notes/documents/a/one.md")
    doc = await r.json()
    assert (
        r.status == 200
        and doc["id"] == "a/one.md"
        and doc["chunks"][0]["citation"]["line_start"] == 1
    )
    r = await client.get("/v1/collections/notes/documents", params={"limit": "1"})
    page = await r.json()
    assert len(page["documents"]) == 1 and page["next_after"] == "a/one.md"

    r = await client.post(
        "/v1/search", json={"collection": "notes", "query": "cat mat", "top_k": 5}
    )
    out = await r.json()
    assert r.status == 200 and out["results"][0]["document_id"] == "a/one.md"
    res = out["results"][0]
    assert set(res) >= {"document_id", "chunk_id", "text", "score", "citation"}
    assert set(res["citation"]) >= {
        "document_id",
        "source",
        "char_start",
        "char_end",
        "line_start",
        "line_end",
    }
    assert set(out["timings_ms"]) == {"embed", "keyword", "vector", "rerank", "total"}
    r = await client.post(
        "/v1/search", json={"collection": "notes", "query": "chat", "filter": {"lang": "en"}}
    )
    assert all(x["document_id"] == "a/one.md" for x in (await r.json())["results"])

    r = await client.delete("/v1/collections/notes/documents/two")
    assert r.status == 200
    assert (await client.get("/v1/collections/notes/documents/two")).status == 404
    assert (await client.delete("/v1/collections/notes/documents/two")).status == 404
    r = await client.post("/v1/compact")
    assert r.status == 200 and "reclaimed" in await r.json()


async def test_async_job_via_api(client) -> None:  # type: ignore[no-untyped-def]
    await client.post("/v1/collections", json={"name": "n"})
    docs = [{"id": f"d{i}", "text": f"document number {i} token{i}"} for i in range(30)]
    r = await client.post("/v1/collections/n/documents", json={"documents": docs, "async": True})
    assert r.status == 202
    job_id = (await r.json())["job_id"]
    for _ in range(100):
        job = await (await client.get(f"/v1/jobs/{job_id}")).json()
        if job["state"] == "done":
            break
        await asyncio.sleep(0.05)
    assert job["state"] == "done" and (job["total"], job["done"], job["failed"]) == (30, 30, 0)
    assert job["errors"] == []
    jobs = await (await client.get("/v1/jobs", params={"state": "done"})).json()
    assert jobs["jobs"][0]["job_id"] == job_id
    r = await client.post(f"/v1/jobs/{job_id}/retry")  # only a failed job is retried
    assert r.status == 409 and (await r.json())["error"]["type"] == "conflict"
    assert "is done" in (await r.json())["error"]["message"]
    r = await client.post(
        "/v1/search", json={"collection": "n", "query": "token17", "mode": "keyword"}
    )
    assert (await r.json())["results"][0]["document_id"] == "d17"


async def test_error_statuses(client) -> None:  # type: ignore[no-untyped-def]
    await client.post("/v1/collections", json={"name": "n"})
    cases = [
        ("post", "/v1/search", {"collection": "missing", "query": "x"}, 404),
        ("post", "/v1/search", {"collection": "n", "query": "x", "filter": [1]}, 422),
        ("post", "/v1/search", {"collection": "n"}, 422),
        # An id given twice is no longer an error: it counts once, with its last document
        # (test_schema_agreement.py).
        ("post", "/v1/collections/n/documents", {"documents": [{"id": "a", "text": ""}]}, 422),
        (
            "post",
            "/v1/collections/n/documents",
            {"documents": [{"id": "a", "text": "x\u0000y"}]},
            422,
        ),
        (
            "post",
            "/v1/collections/missing/documents",
            {"documents": [{"id": "a", "text": "x"}]},
            404,
        ),
        ("post", "/v1/collections", {"name": "bad/name"}, 422),
        ("get", "/v1/jobs/job_nope", None, 404),
        ("post", "/v1/jobs/job_nope/retry", None, 404),
        ("get", "/v1/jobs?state=weird", None, 422),
    ]
    for method, url, body, status in cases:
        r = (
            await getattr(client, method)(url, json=body)
            if body is not None
            else await getattr(client, method)(url)
        )
        assert r.status == status, (url, body, await r.text())
        err = (await r.json())["error"]
        assert err["message"] and err["code"]
    r = await client.post(
        "/v1/search", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert r.status == 400
    big = {"documents": [{"id": "big", "text": "a" * (50 * 1024 * 1024)}]}
    r = await client.post("/v1/collections/n/documents", json=big)
    assert r.status == 413 and "MB" in (await r.json())["error"]["message"]


async def test_model_mismatch_is_409_naming_reindex(
    aiohttp_client,
    tmp_path: Path,  # type: ignore[no-untyped-def]
    minilm: Path,
) -> None:
    home = tmp_path / "home"
    c1 = await started(aiohttp_client, daemon(home, minilm, model_id="model-A"))
    await c1.post("/v1/collections", json={"name": "n"})
    await c1.post(
        "/v1/collections/n/documents", json={"documents": [{"id": "a", "text": "hello world"}]}
    )
    await c1.close()
    c2 = await started(aiohttp_client, daemon(home, minilm, dim=32, model_id="model-B"))
    r = await c2.post("/v1/search", json={"collection": "n", "query": "hello"})
    assert r.status == 409
    msg = (await r.json())["error"]["message"]
    assert "model-A" in msg and "model-B" in msg and "reindex" in msg
    r = await c2.post("/v1/collections/n/reindex")
    assert r.status == 202
    job_id = (await r.json())["job_id"]
    for _ in range(100):
        if (await (await c2.get(f"/v1/jobs/{job_id}")).json())["state"] == "done":
            break
        await asyncio.sleep(0.05)
    r = await c2.post("/v1/search", json={"collection": "n", "query": "hello"})
    assert r.status == 200 and (await r.json())["results"][0]["document_id"] == "a"
    store = c2.server.app[COLLECTIONS_KEY].store
    assert isinstance(store, SQLiteStore) and store.path == home / "data" / "localrank.db"


async def _health_until_collections_ready(client) -> dict:  # type: ignore[no-untyped-def]
    for _ in range(200):
        body = await (await client.get("/health")).json()
        if body["collections"]["ready"]:
            return body
        await asyncio.sleep(0.02)
    raise AssertionError(f"collections never ready: {body}")


async def test_health_reports_search_readiness_across_a_restart(
    aiohttp_client,
    tmp_path: Path,  # type: ignore[no-untyped-def]
    minilm: Path,
) -> None:
    home = tmp_path / "home"
    c1 = await started(aiohttp_client, daemon(home, minilm))
    body = await _health_until_collections_ready(c1)
    assert body["collections"] == {"ready": True, "loaded": 0, "total": 0}
    for name in ("notes", "empty"):
        assert (await c1.post("/v1/collections", json={"name": name})).status == 201
    r = await c1.post("/v1/collections/notes/documents", json={"documents": DOCS})
    assert r.status == 200
    await c1.close()

    # The restarted daemon loads both collections' indexes by itself, in the background.
    app = daemon(home, minilm)
    c2 = await aiohttp_client(app)
    early = await (await c2.get("/health")).json()  # model and collections may still load
    assert set(early["collections"]) == {"ready", "loaded", "total"}
    await app[STATE_KEY].ready.wait()
    r = await c2.post(
        "/v1/search", json={"collection": "notes", "query": "cat mat", "mode": "vector"}
    )
    assert r.status == 200 and (await r.json())["results"][0]["document_id"] == "a/one.md"
    body = await _health_until_collections_ready(c2)
    assert body["status"] == "ok"
    assert body["collections"] == {"ready": True, "loaded": 2, "total": 2}
    store = app[COLLECTIONS_KEY].store
    assert isinstance(store, SQLiteStore)
    assert store.indexes.get(store.get_collection("notes").id) is not None
