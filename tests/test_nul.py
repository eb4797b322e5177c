"""NUL characters (U+0000), which PostgreSQL's text and jsonb cannot keep, refused with 422 by
both stores alike: in a document's id, source, metadata key or value, a filter, a document
looked up by id, `?source=` and `?after=`. SQLite took them (so `store migrate` of such data
failed) and PostgreSQL answered 500 (issue 20, reproduction 6)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from store_helpers import make_doc, unit
from test_shared_store import daemon, started

from localrank.errors import InvalidInput
from localrank.store import open_store
from localrank.store.records import NO_NUL

BAD_DOCUMENTS: dict[str, dict[str, Any]] = {
    "id": {"id": "a\x00b", "text": "lava"},
    "source": {"id": "s", "text": "lava", "source": "/x\x00y"},
    "metadata key": {"id": "k", "text": "lava", "metadata": {"k\x00": 1}},
    "metadata value": {"id": "v", "text": "lava", "metadata": {"k": "v\x00"}},
    "metadata list value": {"id": "l", "text": "lava", "metadata": {"k": ["ok", "v\x00"]}},
}
# Deeper in metadata, a NUL is kept by both stores alike (as JSON's escape, `\u0000`).
# (And null stays a metadata value, top-level or in a list, as before the rule.)
NESTED = {
    "id": "nested",
    "text": "lava",
    "metadata": {"k": {"deep": ["x\x00"]}, "n": [["\x00"], None], "none": None},
}


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return str(request.getfixturevalue("pg_url"))


async def test_nul_is_422_in_both_stores(
    aiohttp_client, tmp_path: Path, minilm: Path, store_url: str
) -> None:  # type: ignore[no-untyped-def]
    client = await started(aiohttp_client, daemon(tmp_path / "home", minilm, store_url))
    assert (await client.post("/v1/collections", json={"name": "notes"})).status == 201
    good = {"id": "good", "text": "volcano lava", "metadata": {"k": "v"}}
    r = await client.post("/v1/collections/notes/documents", json={"documents": [good]})
    assert r.status == 200, await r.text()
    openapi = await (await client.get("/openapi.json")).json()
    documented = json.dumps(openapi["paths"]["/v1/collections/{name}/documents"])
    assert json.dumps(NO_NUL) in documented  # the rule is in the document the fuzzer reads
    for what, doc in BAD_DOCUMENTS.items():
        for background in (False, True):
            body = {"documents": [doc], "background": background}
            r = await client.post("/v1/collections/notes/documents", json=body)
            out = await r.json()
            assert r.status == 422 and "NUL" in out["error"]["message"], (what, out)
    lookups = [
        ("GET", "/v1/collections/notes/documents/a%00b", None),
        ("DELETE", "/v1/collections/notes/documents/a%00b", None),
        ("GET", "/v1/collections/notes/documents?source=/x%00y", None),
        ("GET", "/v1/collections/notes/documents?after=a%00", None),
        ("POST", "/v1/search", {"collection": "notes", "query": "lava", "filter": {"k": "v\x00"}}),
        ("POST", "/v1/search", {"collection": "notes", "query": "lava", "filter": {"k\x00": 1}}),
    ]
    for method, path, body in lookups:
        r = await client.request(method, path, json=body)
        out = await r.json()
        assert r.status == 422 and "NUL" in out["error"]["message"], (method, path, out)
    r = await client.get("/v1/collections/notes/documents")
    assert [d["id"] for d in (await r.json())["documents"]] == ["good"]
    r = await client.post("/v1/collections/notes/documents", json={"documents": [NESTED]})
    assert r.status == 200, await r.text()
    r = await client.get("/v1/collections/notes/documents/nested")
    assert (await r.json())["metadata"] == NESTED["metadata"]


def test_the_stores_refuse_nul_themselves(tmp_path: Path, pg_url: str) -> None:
    """Below the API (the CLI, a migration): the same refusal from either store, so a
    collection one store holds can always move to the other."""
    rng = np.random.default_rng(0)
    for location in (str(tmp_path / "s.db"), pg_url):
        store = open_store(location)
        try:
            store.create_collection("c", fingerprint="fp", model_id="m", dim=8, settings={})
            for bad in (
                make_doc("x\x00", unit(rng, 1, 8), {}),
                make_doc("y", unit(rng, 1, 8), {"k": ["\x00"]}),
                make_doc("z", unit(rng, 1, 8), {"\x00": 1}),
            ):
                with pytest.raises(InvalidInput, match="NUL"):
                    store.write_documents("c", "fp", "m", [bad])
            assert store.list_documents(store.get_collection("c"), limit=10) == []
            nested = {"k": {"deep": "\x00"}, "n": [["\x00"]]}
            store.write_documents("c", "fp", "m", [make_doc("ok", unit(rng, 1, 8), nested)])
            (doc,) = store.list_documents(store.get_collection("c"), limit=10)
            assert doc.metadata == nested
        finally:
            store.close()


async def test_a_path_with_nul_is_422(aiohttp_client, tmp_path: Path, minilm: Path) -> None:  # type: ignore[no-untyped-def]
    """Indexing or watching such a path was a 500 ("embedded null byte")."""
    client = await started(
        aiohttp_client, daemon(tmp_path / "home", minilm, f"sqlite:///{tmp_path / 's.db'}")
    )
    assert (await client.post("/v1/collections", json={"name": "notes"})).status == 201
    for path, body in (
        ("/v1/watches", {"collection": "notes", "path": "/tmp/a\x00b"}),
        ("/v1/collections/notes/index", {"path": "/tmp/a\x00b"}),
    ):
        r = await client.post(path, json=body)
        out = await r.json()
        assert r.status == 422 and "NUL" in out["error"]["message"], (path, out)
