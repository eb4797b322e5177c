"""The store protocol: collections, upsert/delete, candidates, filters, compact, the cache, and
readers running while a writer writes. Exercised through the protocol's methods only, so the
same suite holds any implementation; SQLite's own internals are in test_store_sqlite.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from store_helpers import make_doc, unit

from localrank.collections.search import parse_filter
from localrank.errors import Conflict, InvalidInput, ModelMismatch, NotFound
from localrank.store import SQLiteStore, Store
from localrank.store.records import Collection

DIM = 64


@pytest.fixture
def store(tmp_path: Path):
    s = SQLiteStore(tmp_path / "db" / "localrank.db")
    yield s
    s.close()


def add_docs(store: Store, name: str, docs) -> None:
    store.write_documents(name, "fp", "m", docs)


def new_collection(store: Store, name: str = "c", dim: int = DIM) -> Collection:
    return store.create_collection(name, fingerprint="fp", model_id="m", dim=dim, settings={})


def ids_of(store: Store, hits: list[tuple[int, float]]) -> set[str]:
    return {c.document_id for c in store.fetch_chunks([h for h, _ in hits])}


def test_collection_rules(store: Store) -> None:
    new_collection(store)
    with pytest.raises(Conflict):
        new_collection(store)
    with pytest.raises(InvalidInput):
        store.create_collection("bad name/..", fingerprint="f", model_id="m", dim=8, settings={})
    with pytest.raises(NotFound):
        store.get_collection("missing")
    assert [(c.name, d, n) for c, d, n in store.list_collections()] == [("c", 0, 0)]
    # A write embedded with another model is refused: vectors never mix.
    with pytest.raises(ModelMismatch):
        store.write_documents(
            "c", "other-fp", "other", [make_doc("x", unit(np.random.default_rng(0), 1))]
        )
    store.delete_collection("c")
    assert store.list_collections() == []


def test_upsert_delete_and_incremental_index(store: Store) -> None:
    rng = np.random.default_rng(1)
    coll = new_collection(store)
    vecs = {f"d{i}": unit(rng, 3) for i in range(20)}
    add_docs(store, "c", [make_doc(k, v) for k, v in vecs.items()])
    assert store.list_collections()[0][1:] == (20, 60)
    assert store.document_hashes(coll, ["d0", "nope"]) == {"d0": "h-d0-None"}
    # Update d0 with new vectors (old chunks go, new ones come), delete d1.
    new = unit(rng, 2)
    add_docs(store, "c", [make_doc("d0", new, text="changed")])
    store.delete_document("c", "d1")
    with pytest.raises(NotFound):
        store.delete_document("c", "d1")
    assert store.list_collections()[0][1:] == (19, 60 - 3 + 2 - 3)
    hits = store.vector_candidates(coll, new[0], 5, candidates=50)
    top = store.fetch_chunks([hits[0][0]])[0]
    assert top.document_id == "d0" and hits[0][1] == pytest.approx(1.0, abs=1e-5)
    assert "d1" not in ids_of(
        store, store.vector_candidates(coll, vecs["d1"][0], 60, candidates=60)
    )
    doc, chunks = store.get_document(coll, "d0")
    assert doc.text == "changed" and [c.span.ordinal for c in chunks] == [0, 1]
    assert [d.doc_id for d in store.list_documents(coll, limit=2, after="d0")] == ["d10", "d11"]
    # A second store on the same database (another process) sees the same thing from scratch.
    other = SQLiteStore(store.path)
    try:
        assert len(other.vector_candidates(coll, new[0], 100, candidates=100)) == 56
    finally:
        other.close()


def test_filter_applies_inside_the_scan(store: Store) -> None:
    rng = np.random.default_rng(2)
    coll = new_collection(store)
    query = unit(rng, 1)[0]
    # 200 near-duplicates of the query without the tag, 5 far-away documents with it.
    near = [
        make_doc(f"n{i}", (query + 0.05 * unit(rng, 1))[None, 0] / 1.0, {"lang": "en"})
        for i in range(200)
    ]
    far = [make_doc(f"f{i}", unit(rng, 1), {"lang": "fr", "tags": ["a", "b"]}) for i in range(5)]
    add_docs(store, "c", near + far)
    hits = store.vector_candidates(coll, query, 10, candidates=3, flt=parse_filter({"lang": "fr"}))
    assert len(hits) == 5  # all five, even with 3 binary candidates requested
    assert ids_of(store, hits) == {f"f{i}" for i in range(5)}
    both = parse_filter({"tags": "b", "lang": ["fr", "de"]})
    assert len(store.vector_candidates(coll, query, 10, candidates=10, flt=both)) == 5
    none = parse_filter({"tags": "zzz"})
    assert store.vector_candidates(coll, query, 10, candidates=10, flt=none) == []
    assert store.keyword_candidates(coll, "chunk", 10, none) == []
    assert ids_of(store, store.keyword_candidates(coll, "f3", 10, both)) == {"f3"}
    for bad in ([1], {"k": {"$gt": 1}}, {"": 1}, {"k": None}, {"k": []}):
        with pytest.raises(InvalidInput):
            parse_filter(bad)


def test_binary_candidates_then_exact_rescoring_recall(store: Store) -> None:
    rng = np.random.default_rng(3)
    coll = new_collection(store, dim=128)
    centres = unit(rng, 50, 128)
    data = centres[rng.integers(0, 50, 5000)] + 0.6 * rng.standard_normal((5000, 128)).astype(
        np.float32
    ) / np.sqrt(128)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    add_docs(store, "c", [make_doc(f"d{i}", data[i : i + 50]) for i in range(0, 5000, 50)])
    # Chunk ids in insertion order: the row of `data` each chunk holds.
    ids = np.array([c.id for i in range(0, 5000, 50) for c in store.get_document(coll, f"d{i}")[1]])
    recalls = []
    # Queries come from the data distribution (a random direction has no real neighbours).
    queries = centres[:20] + 0.6 * rng.standard_normal((20, 128)).astype(np.float32) / np.sqrt(128)
    for q in queries / np.linalg.norm(queries, axis=1, keepdims=True):
        exact = set(ids[np.argsort(-(data @ q))[:10]].tolist())
        got = {c for c, _ in store.vector_candidates(coll, q, 10, candidates=300)}
        recalls.append(len(exact & got) / 10)
    assert np.mean(recalls) >= 0.95


def test_compact_reclaims_space(store: Store) -> None:
    rng = np.random.default_rng(4)
    new_collection(store, dim=256)
    add_docs(store, "c", [make_doc(f"d{i}", unit(rng, 20, 256)) for i in range(50)])
    for i in range(45):
        store.delete_document("c", f"d{i}")
    report = store.compact(cache_max_rows=1000)
    assert report.bytes_after < report.bytes_before / 2
    assert store.list_collections()[0][1:] == (5, 100)
    # the survivors are still found, with exact scores
    coll = store.get_collection("c")
    doc, chunks = store.get_document(coll, "d49")
    hits = store.vector_candidates(coll, np.ones(256, dtype=np.float32) / 16, 200, candidates=200)
    assert len(hits) == 100 and {c.id for c in chunks} <= {h for h, _ in hits}


def test_embedding_cache(store: Store) -> None:
    vecs = unit(np.random.default_rng(5), 3)
    new_collection(store)
    store.write_documents("c", "fp", "m", [], cache=list(zip(["a", "b", "c"], vecs, strict=True)))
    got = store.cache_get("fp", ["b", "zz", "a"], DIM)
    assert set(got) == {0, 2} and np.allclose(got[0], vecs[1])
    assert store.cache_get("other-fp", ["a"], DIM) == {}
    assert store.trim_cache(1) == 2
    assert len(store.cache_get("fp", ["a", "b", "c"], DIM)) == 1


def test_filters_compare_values_exactly_as_stored(store: Store) -> None:
    rng = np.random.default_rng(7)
    coll = new_collection(store)
    values = {
        "s110": "1.10",
        "s11": "1.1",
        "s01234": "01234",
        "n1234": 1234,
        "s1e3": "1e3",
        "n1000": 1000,
        "f1": 1.0,
        "n1": 1,
        "t": True,
        "list": ["1.10", 7],
    }
    add_docs(store, "c", [make_doc(k, unit(rng, 1), {"v": v}) for k, v in values.items()])
    q = unit(rng, 1)[0]

    def matching(value: object) -> set[str]:
        hits = store.vector_candidates(coll, q, 50, candidates=50, flt=parse_filter({"v": value}))
        return ids_of(store, hits)

    assert matching("1.1") == {"s11"}
    assert matching("1.10") == {"s110", "list"}
    assert matching("01234") == {"s01234"}
    assert matching(1234) == {"n1234"}
    assert matching("1e3") == {"s1e3"}
    assert matching(1000) == {"n1000"}
    assert matching(1) == {"f1", "n1", "t"}  # numbers compare as numbers; true is stored as 1
    assert matching(7) == {"list"}
    assert matching("7") == set()
