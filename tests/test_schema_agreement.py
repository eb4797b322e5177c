"""The OpenAPI document and the checks agree: a request the document allows is accepted (or
answered 404/409 for what it names), one it forbids is refused with a 4xx in the route's
dialect. The cases are the ones `st run --checks all` found disagreeing (issue 20), checked
here against the daemon's real app and its own /openapi.json with a JSON Schema validator, and
the behaviours that changed so that the two could agree, each shown on its own.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from daemons import write_notes
from fake_embedder import hash_loader

from localrank.config import load_settings
from localrank.serve.app import make_app
from localrank.serve.state import STATE_KEY


@pytest.fixture
async def client(aiohttp_client, tmp_path: Path, minilm: Path, tiny_cross_encoder: Path):  # type: ignore[no-untyped-def]
    settings = load_settings(
        {"home": str(tmp_path / "home"), "reranker": str(tiny_cross_encoder)}, environ={}
    )
    app: web.Application = make_app(settings, loader=hash_loader(minilm))
    c = await aiohttp_client(app)
    await app[STATE_KEY].ready.wait()
    assert app[STATE_KEY].models is not None
    return c


def _operation(spec: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    for template, ops in spec["paths"].items():
        pattern = "^" + re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path) and method.lower() in ops:
            return dict(ops[method.lower()])
    raise KeyError((method, path))


def documented(
    spec: dict[str, Any], method: str, path: str, body: Any, query: dict[str, str]
) -> bool:
    """Whether the document allows the request (its body and its query string)."""
    op = _operation(spec, method, path)
    for p in op.get("parameters", []):
        if p["in"] == "query" and p["name"] in query:
            value: Any = query[p["name"]]
            if p["schema"].get("type") == "integer" and re.fullmatch(r"-?\d+", value):
                value = int(value)
            if not jsonschema.Draft202012Validator(p["schema"]).is_valid(value):
                return False
        elif p["in"] == "query" and p["required"]:
            return False
    if "requestBody" in op:
        if body is None:
            return not op["requestBody"]["required"]
        schema = op["requestBody"]["content"]["application/json"]["schema"]
        return bool(jsonschema.Draft202012Validator(schema).is_valid(body))
    return True


CASES: list[tuple[str, str, Any, dict[str, str], bool]] = [
    # (method, path, body, query, allowed by the document and accepted)
    ("POST", "/v2/rerank", {"documents": [], "query": "q"}, {}, False),  # Cohere refuses too
    ("POST", "/v2/rerank", {"documents": ["a"], "query": "q", "instruction": None}, {}, True),
    ("POST", "/v1/rerank", {"documents": ["a"], "query": "q", "top_n": None}, {}, True),
    ("POST", "/v1/search", {"collection": "c", "query": "q", "candidates": None}, {}, True),
    ("POST", "/v1/search", {"collection": "c", "query": "q", "top_k": 5.0}, {}, True),
    ("POST", "/v1/search", {"collection": "c", "query": " \u3000"}, {}, False),
    ("GET", "/v1/jobs", None, {"limit": "0"}, False),
    ("GET", "/v1/jobs", None, {"state": ""}, False),
    ("GET", "/v1/jobs", None, {"state": "done", "limit": "5"}, True),
    ("GET", "/v1/collections/c/documents", None, {"limit": "1001"}, False),
    ("POST", "/api/v1/embed", {"texts": ["a"], "dimensions": 10_000}, {}, False),
    ("POST", "/api/v1/embed", {"texts": ["a"], "dimensions": 32}, {}, True),
    ("POST", "/api/v1/embed", {"texts": ["a"], "truncate": None, "normalize": None}, {}, True),
    ("POST", "/api/v1/rerank", {"query": "q", "documents": [{"x": 1}]}, {}, False),
    ("POST", "/api/v1/rerank", {"query": "q", "passages": ["a"], "method": "x"}, {}, False),
    ("POST", "/api/show", {"model": None}, {}, False),
    ("POST", "/api/embed", {"input": "x", "keep_alive": None, "options": None}, {}, True),
    ("POST", "/v1/embeddings", {"input": [[1.0, 2]]}, {}, True),
    (
        "POST",
        "/v1/embeddings",
        {"input": "x", "input_type": "Document", "instruction": "i"},
        {},
        False,
    ),
    ("POST", "/v1/embeddings", {"input": "x", "encoding_format": "int8"}, {}, False),
    ("POST", "/embed", {"inputs": "x", "truncation_direction": "left"}, {}, False),
    ("POST", "/v1/embed", {"texts": ["a"], "truncate": "end"}, {}, True),
    ("POST", "/v1/embed", {"texts": ["a"], "truncate": "START"}, {}, False),
    ("POST", "/v1/rerank", {"query": "q", "documents": [{"title": "t"}]}, {}, False),
    ("POST", "/v1/rerank", {"query": "q", "documents": [{"t": 1}], "rank_fields": ["b"]}, {}, True),
    ("POST", "/v1/collections", {"name": "a/b"}, {}, False),
    ("POST", "/v1/collections", {"name": "ok", "settings": {"chunk_tokens": 8}}, {}, False),
    ("POST", "/v1/collections/c/reindex", None, {}, True),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "query", "ok"),
    CASES,
    ids=[f"{m} {p} {json.dumps(b)[:40]} {q}" for m, p, b, q, _ in CASES],
)
async def test_what_the_document_allows_the_checks_accept(
    client: TestClient, method: str, path: str, body: Any, query: dict[str, str], ok: bool
) -> None:
    spec = await (await client.get("/openapi.json")).json()
    assert documented(spec, method, path, body, query) is ok
    r = await client.request(method, path, json=body, params=query)
    accepted = 200 <= r.status < 300 or r.status in (404, 409)
    assert accepted is ok, (r.status, await r.text())
    if not ok:
        assert r.status in (400, 422), await r.text()


# --- the behaviours that changed so that document and checks agree ------------------------------


async def _collection(client: TestClient, name: str = "notes") -> None:
    assert (await client.post("/v1/collections", json={"name": name})).status == 201


async def test_an_id_given_twice_counts_once_with_its_last_document(client: TestClient) -> None:
    """No JSON Schema keyword says "ids unique within the list": the request is valid, and the
    documents are taken as if sent one after the other (before: 422)."""
    await _collection(client)
    docs = [{"id": "a", "text": "first version"}, {"id": "a", "text": "the second one"}]
    r = await client.post("/v1/collections/notes/documents", json={"documents": docs})
    assert r.status == 200, await r.text()
    assert [d["id"] for d in (await r.json())["documents"]] == ["a"]
    stored = await (await client.get("/v1/collections/notes/documents/a")).json()
    assert stored["text"] == "the second one"


async def test_a_clients_text_is_taken_as_text(client: TestClient) -> None:
    """The binary-looking heuristic is for files read from folders; a client's document with
    control characters (a log with ANSI colours) is its text (before: 422)."""
    await _collection(client)
    text = "\x1b[31merror\x1b[0m: disk full\x07\n" * 5
    r = await client.post(
        "/v1/collections/notes/documents", json={"documents": [{"id": "log", "text": text}]}
    )
    assert r.status == 200, await r.text()
    nul = [{"id": "nul", "text": "a\x00b"}]  # NUL stays refused, and is documented so
    assert (
        await client.post("/v1/collections/notes/documents", json={"documents": nul})
    ).status == 422


async def test_reindexing_to_the_same_model_is_a_conflict(client: TestClient) -> None:
    """Nothing in the request is wrong: the collection's state stands in the way (before:
    422, which the document could not explain)."""
    await _collection(client)
    r = await client.post("/v1/collections/notes/reindex", json={"force": False})
    assert r.status == 409 and "pass force" in (await r.json())["error"]["message"]
    assert (await client.post("/v1/collections/notes/reindex", json={"force": True})).status == 202


async def test_rank_fields_rank_on_the_fields_a_document_has(client: TestClient) -> None:
    """Cohere v1's rank_fields: a document without one of them is ranked on the others (before:
    422 for a shape the document could not express)."""
    docs = [{"title": "Paris", "body": "capital of France"}, {"title": "Bread"}, {"n": 5}]
    r = await client.post(
        "/v1/rerank",
        json={"query": "France", "documents": docs, "rank_fields": ["title", "body", "n"]},
    )
    assert r.status == 200, await r.text()
    assert sorted(x["index"] for x in (await r.json())["results"]) == [0, 1, 2]


async def test_watching_a_folder_that_does_not_exist_is_404(
    client: TestClient, tmp_path: Path
) -> None:
    """As for indexing it (before: 422 'not a folder')."""
    missing = {"collection": "notes", "path": str(tmp_path / "nowhere")}
    r = await client.post("/v1/watches", json=missing)
    assert r.status == 404 and (await r.json())["error"]["param"] == "path"
    (tmp_path / "file.md").write_text("# a file\n")
    r = await client.post(
        "/v1/watches", json={"collection": "notes", "path": str(tmp_path / "file.md")}
    )
    assert r.status == 422  # a file is not a folder
    write_notes(tmp_path / "notes")
    r = await client.post(
        "/v1/watches", json={"collection": "notes", "path": str(tmp_path / "notes")}
    )
    assert r.status == 201, await r.text()


async def test_integers_beyond_64_bits(client: TestClient) -> None:
    """JSON numbers have no size: one beyond the stores' 64-bit integers is kept as a float
    for filtering, in metadata and in filters alike (before: a 500 from the store)."""
    await _collection(client)
    doc = {"id": "big", "text": "a big number", "metadata": {"n": 2**80}}
    r = await client.post("/v1/collections/notes/documents", json={"documents": [doc]})
    assert r.status == 200, await r.text()
    for value in (2**80, [2**80, -(2**70)], float(2**80)):
        found = await client.post(
            "/v1/search", json={"collection": "notes", "query": "big", "filter": {"n": value}}
        )
        assert found.status == 200, await found.text()
        assert [x["document_id"] for x in (await found.json())["results"]] == ["big"]
    stored = await (await client.get("/v1/collections/notes/documents/big")).json()
    assert stored["metadata"]["n"] == 2**80  # the document keeps its exact value


async def test_json_numbers_are_finite(client: TestClient) -> None:
    """Python's JSON reader takes NaN and Infinity: a number field refuses them (before: 200)."""
    for raw in ('{"input": "x", "keep_alive": NaN}', '{"input": "x", "keep_alive": 1e999}'):
        r = await client.post("/api/embed", data=raw, headers={"Content-Type": "application/json"})
        assert r.status == 422 and "finite" in (await r.json())["error"], raw


async def test_indexing_does_not_bring_a_deleted_collection_back(
    client: TestClient, tmp_path: Path
) -> None:
    """A folder is indexed into an existing collection, as documents are added to one: after
    DELETE, the collection's paths are 404 (the stateful fuzz run saw index re-create it). The
    daemon client (the CLI, the MCP server) creates it first."""
    write_notes(tmp_path / "notes")
    body = {"path": str(tmp_path / "notes")}
    r = await client.post("/v1/collections/notes/index", json=body)
    assert r.status == 404 and (await r.json())["error"]["param"] == "collection"
    await _collection(client)
    assert (await client.post("/v1/collections/notes/index", json=body)).status == 200
    assert (await client.delete("/v1/collections/notes")).status == 200
    assert (await client.post("/v1/collections/notes/index", json=body)).status == 404
    assert (await client.get("/v1/collections/notes/documents")).status == 404
