"""The store: connection discipline, migrations, upsert/delete, the binary index, filters,
compact, integrity, cache, and readers running while a writer writes."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from localrank.chunking import Chunk
from localrank.errors import Conflict, InvalidInput, NotFound
from localrank.store import Store
from localrank.store import documents as docs_db
from localrank.store.cache import cache_get, cache_put, trim_cache
from localrank.store.filters import allowed_documents, parse_filter
from localrank.store.maintenance import compact, counts, integrity_check
from localrank.store.records import PreparedDocument
from localrank.store.retrieve import vector_candidates
from localrank.store.schema import MIGRATIONS
from localrank.store.vector_index import quantize

DIM = 64


@pytest.fixture
def store(tmp_path: Path):
    s = Store(tmp_path / "db" / "localrank.db")
    yield s
    s.close()


def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def make_doc(doc_id: str, vectors: np.ndarray, meta: dict | None = None, text: str | None = None):
    chunks = [
        Chunk(i, f"{doc_id} chunk {i}", i * 10, i * 10 + 9, i + 1, i + 1)
        for i in range(len(vectors))
    ]
    return PreparedDocument(
        doc_id, text or doc_id, meta or {}, f"/src/{doc_id}", f"h-{doc_id}-{text}", chunks, vectors
    )


def add_docs(store: Store, name: str, docs) -> None:
    with store.db.write() as conn:
        docs_db.write_documents(conn, docs_db.get_collection(conn, name), docs)


def new_collection(store: Store, name: str = "c", dim: int = DIM):
    return docs_db.create_collection(store.db, name, fingerprint="fp", model_id="m", dim=dim)


def test_pragmas_and_migrations(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    with Store(path) as s:
        conn = s.db.reader()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        names = [r[0] for r in conn.execute("SELECT name FROM migrations ORDER BY rowid")]
        assert names == [m[0] for m in MIGRATIONS]
        assert conn.execute("SELECT vec_version()").fetchone()[0].startswith("v")
    with Store(path) as s:  # reopening applies nothing twice
        n = s.db.reader().execute("SELECT count(*) FROM migrations").fetchone()[0]
        assert n == len(MIGRATIONS)


def test_codes_match_sqlite_vec(store: Store) -> None:
    v = unit(np.random.default_rng(0), 3)
    conn = store.db.reader()
    for row in v:
        ours = quantize(row)[0].tobytes()
        theirs = conn.execute(
            "SELECT vec_quantize_binary(vec_f32(?))", (row.tobytes(),)
        ).fetchone()[0]
        assert ours == theirs


def test_collection_rules(store: Store) -> None:
    new_collection(store)
    with pytest.raises(Conflict):
        new_collection(store)
    with pytest.raises(InvalidInput):
        docs_db.create_collection(store.db, "bad name/..", fingerprint="f", model_id="m", dim=8)
    with pytest.raises(NotFound):
        docs_db.get_collection(store.db.reader(), "missing")


def test_upsert_delete_and_incremental_index(store: Store) -> None:
    rng = np.random.default_rng(1)
    coll = new_collection(store)
    vecs = {f"d{i}": unit(rng, 3) for i in range(20)}
    add_docs(store, "c", [make_doc(k, v) for k, v in vecs.items()])
    idx = store.indexes.get(coll.id)
    assert idx is not None and idx.size == 60
    # Update d0 with new vectors: old chunk ids become tombstones, new ones are appended.
    new = unit(rng, 2)
    add_docs(store, "c", [make_doc("d0", new, text="changed")])
    docs_db.delete_document(store.db, "c", "d1")
    idx2 = store.indexes.get(coll.id)
    assert idx2 is not None and idx2.size == 60 - 3 + 2 - 3
    conn = store.db.reader()
    hits = vector_candidates(conn, idx2, new[0], 5, 50)
    top = docs_db.fetch_chunks(conn, [hits[0][0]])[0]
    assert top.document_id == "d0" and hits[0][1] == pytest.approx(1.0, abs=1e-5)
    gone = {
        c.document_id
        for c in docs_db.fetch_chunks(
            conn, [c for c, _ in vector_candidates(conn, idx2, vecs["d1"][0], 60, 60)]
        )
    }
    assert "d1" not in gone
    # A fresh registry (another process) sees the same thing from scratch.
    other = Store(store.path)
    try:
        assert other.indexes.get(coll.id).size == idx2.size
    finally:
        other.close()
    assert counts(conn)["chunks"] == counts(conn)["vectors"] == idx2.size


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
    conn = store.db.reader()
    allowed = allowed_documents(conn, coll.id, parse_filter({"lang": "fr"}))
    hits = vector_candidates(conn, store.indexes.get(coll.id), query, 10, 3, allowed)
    assert len(hits) == 5  # all five, even with 3 binary candidates requested
    assert {c.document_id for c in docs_db.fetch_chunks(conn, [h for h, _ in hits])} == {
        f"f{i}" for i in range(5)
    }
    assert (
        len(allowed_documents(conn, coll.id, parse_filter({"tags": "b", "lang": ["fr", "de"]})))
        == 5
    )
    assert len(allowed_documents(conn, coll.id, parse_filter({"tags": "zzz"}))) == 0
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
    conn = store.db.reader()
    idx = store.indexes.get(coll.id)
    ids = np.array(sorted(idx.ids))
    recalls = []
    # Queries come from the data distribution (a random direction has no real neighbours).
    queries = centres[:20] + 0.6 * rng.standard_normal((20, 128)).astype(np.float32) / np.sqrt(128)
    for q in queries / np.linalg.norm(queries, axis=1, keepdims=True):
        exact = set(ids[np.argsort(-(data @ q))[:10]].tolist())
        got = {c for c, _ in vector_candidates(conn, idx, q, 10, 300)}
        recalls.append(len(exact & got) / 10)
    assert np.mean(recalls) >= 0.95


def test_compact_reclaims_space(store: Store) -> None:
    rng = np.random.default_rng(4)
    new_collection(store, dim=256)
    add_docs(store, "c", [make_doc(f"d{i}", unit(rng, 20, 256)) for i in range(50)])
    for i in range(45):
        docs_db.delete_document(store.db, "c", f"d{i}")
    report = compact(store.db)
    assert report.tombstones == 45 * 20
    assert report.bytes_after < report.bytes_before / 2
    conn = store.db.reader()
    assert integrity_check(conn) == ["ok"]
    c = counts(conn)
    assert c["chunks"] == c["vectors"] == c["fts_rows"] == 100 and c["chunks_without_vector"] == 0
    # the epoch moved: the index reloads and still finds the survivors
    assert store.indexes.get(docs_db.get_collection(conn, "c").id).size == 100


def test_embedding_cache(store: Store) -> None:
    vecs = unit(np.random.default_rng(5), 3)
    with store.db.write() as conn:
        cache_put(conn, "fp", ["a", "b", "c"], vecs)
    got = cache_get(store.db.reader(), "fp", ["b", "zz", "a"], DIM)
    assert set(got) == {0, 2} and np.allclose(got[0], vecs[1])
    assert cache_get(store.db.reader(), "other-fp", ["a"], DIM) == {}
    with store.db.write() as conn:
        assert trim_cache(conn, 1) == 2


def test_readers_keep_working_while_a_writer_writes(store: Store) -> None:
    rng = np.random.default_rng(6)
    coll = new_collection(store)
    add_docs(store, "c", [make_doc("seed", unit(rng, 4))])
    stop = threading.Event()
    errors: list[BaseException] = []
    reads = 0

    def writer() -> None:
        try:
            for i in range(40):
                with store.db.write() as conn:
                    docs_db.write_documents(
                        conn, docs_db.get_collection(conn, "c"), [make_doc(f"w{i}", unit(rng, 5))]
                    )
                    time.sleep(0.01)  # hold the write lock for a while
        except BaseException as exc:
            errors.append(exc)
        finally:
            stop.set()

    t = threading.Thread(target=writer)
    t.start()
    while not stop.is_set():
        start = time.perf_counter()
        idx = store.indexes.get(coll.id)
        hits = vector_candidates(store.db.reader(), idx, unit(rng, 1)[0], 5, 50)
        assert hits and time.perf_counter() - start < 1.0
        reads += 1
    t.join()
    assert not errors and reads > 5
    assert store.indexes.get(coll.id).size == 4 + 40 * 5
