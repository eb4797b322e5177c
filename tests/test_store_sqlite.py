"""The SQLite store's own discipline: PRAGMAs and migrations, sqlite-vec's code format, the
in-memory index kept current across processes, compaction internals, and readers that never
wait for a writer holding the lock."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from store_helpers import make_doc, migrate_as_before, unit

from localrank.errors import StoreError
from localrank.store import SQLiteStore, steps
from localrank.store.sqlite import catalog, schema
from localrank.store.sqlite import db as sqlite_db
from localrank.store.sqlite.maintenance import counts, integrity_check
from localrank.store.sqlite.vector_index import quantize

DIM = 64


@pytest.fixture
def store(tmp_path: Path):
    s = SQLiteStore(tmp_path / "db" / "localrank.db")
    s.create_collection("c", fingerprint="fp", model_id="m", dim=DIM, settings={})
    yield s
    s.close()


def test_pragmas_and_migrations(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    with SQLiteStore(path) as s:
        conn = s.db.reader()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        names = [r[0] for r in conn.execute("SELECT name FROM localrank_migrations ORDER BY rowid")]
        assert names == [m[0] for m in schema.MIGRATIONS]
        assert conn.execute("SELECT vec_version()").fetchone()[0].startswith("v")
    with SQLiteStore(path) as s:  # reopening applies nothing twice
        n = s.db.reader().execute("SELECT count(*) FROM localrank_migrations").fetchone()[0]
        assert n == len(schema.MIGRATIONS)


@pytest.mark.parametrize("recorded", [4, len(schema.MIGRATIONS)])
def test_a_file_from_before_the_shared_migrations_table_opens_and_migrates_on(
    tmp_path: Path, recorded: int
) -> None:
    """Releases before both engines recorded migrations in `localrank_migrations` called the
    table `migrations`: such a file keeps its record (renamed) and gets what it lacks."""
    path = tmp_path / "old.db"
    database = sqlite_db.Database(path)
    try:
        with database.write() as conn:
            migrate_as_before(conn, schema.MIGRATIONS[:recorded])
            conn.execute(
                "INSERT INTO collections (name, fingerprint, model_id, dim, created) "
                "VALUES ('c', 'fp', 'm', 64, 'then')"
            )
    finally:
        database.close()
    names = [m.name for m in schema.MIGRATIONS]
    with SQLiteStore(path) as s:
        conn = s.db.reader()
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "migrations" not in tables and {"localrank_migrations", "codes"} <= tables
        record = conn.execute("SELECT name, applied FROM localrank_migrations ORDER BY rowid")
        rows = [tuple(r) for r in record]
        assert [name for name, _ in rows] == names
        assert [applied for _, applied in rows[:recorded]] == ["then"] * recorded  # kept
        assert "then" not in [applied for _, applied in rows[recorded:]]  # applied now
        assert schema.applied_migrations(conn) == names
        assert s.get_collection("c").dim == 64
        assert schema.migrate(s.db) == []  # nothing twice


def test_codes_match_sqlite_vec(store: SQLiteStore) -> None:
    conn = store.db.reader()
    for row in unit(np.random.default_rng(0), 3, DIM):
        ours = quantize(row)[0].tobytes()
        theirs = conn.execute(
            "SELECT vec_quantize_binary(vec_f32(?))", (row.tobytes(),)
        ).fetchone()[0]
        assert ours == theirs


def test_index_catches_up_incrementally_and_from_scratch(store: SQLiteStore) -> None:
    rng = np.random.default_rng(1)
    coll = store.get_collection("c")
    store.write_documents("c", "fp", "m", [make_doc(f"d{i}", unit(rng, 3, DIM)) for i in range(20)])
    first = store.indexes.get(coll.id)
    assert first is not None and first.size == 60
    store.write_documents("c", "fp", "m", [make_doc("d0", unit(rng, 2, DIM), text="changed")])
    store.delete_documents("c", ["d1"])
    second = store.indexes.get(coll.id)
    assert second is not None and second.epoch == first.epoch and second.size == 56
    other = SQLiteStore(store.path)  # another process: a fresh registry
    try:
        assert other.indexes.get(coll.id).size == 56
    finally:
        other.close()
    assert counts(store.db.reader())["chunks"] == counts(store.db.reader())["vectors"] == 56


def test_compact_drops_tombstones_and_keeps_integrity(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    with SQLiteStore(tmp_path / "c.db") as s:
        s.create_collection("c", fingerprint="fp", model_id="m", dim=256, settings={})
        s.write_documents(
            "c", "fp", "m", [make_doc(f"d{i}", unit(rng, 20, 256)) for i in range(50)]
        )
        for i in range(45):
            s.delete_documents("c", [f"d{i}"])
        epoch = s.get_collection("c").epoch
        report = s.compact(cache_max_rows=1000)
        assert report.tombstones == 45 * 20
        conn = s.db.reader()
        assert integrity_check(conn) == ["ok"]
        c = counts(conn)
        assert c["chunks"] == c["vectors"] == c["codes"] == c["fts_rows"] == 100
        assert c["chunks_without_vector"] == c["chunks_without_code"] == 0
        # the epoch moved: in-memory indexes anywhere reload instead of missing a deletion
        assert s.get_collection("c").epoch == epoch + 1
        assert s.indexes.get(s.get_collection("c").id).size == 100


def test_readers_keep_working_while_a_writer_holds_the_lock(store: SQLiteStore) -> None:
    rng = np.random.default_rng(6)
    coll = store.get_collection("c")
    store.write_documents("c", "fp", "m", [make_doc("seed", unit(rng, 4, DIM))])
    stop = threading.Event()
    errors: list[BaseException] = []
    reads = 0

    def writer() -> None:
        try:
            for i in range(40):
                with store.db.write() as conn:
                    steps.upsert_documents(
                        catalog,
                        conn,
                        steps.read_collection(catalog, conn, "c"),
                        [make_doc(f"w{i}", unit(rng, 5, DIM))],
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
        hits = store.vector_candidates(coll, unit(rng, 1, DIM)[0], 5, candidates=50)
        assert hits and time.perf_counter() - start < 1.0
        reads += 1
    t.join()
    assert not errors and reads > 5
    assert store.indexes.get(coll.id).size == 4 + 40 * 5


def test_metadata_values_coerced_by_an_old_schema_are_rebuilt_exactly(tmp_path: Path) -> None:
    """Databases from before 0004 stored "1.10" as 1.1 (NUMERIC affinity); the migration rebuilds
    the filter rows from each document's metadata."""
    path = tmp_path / "old.db"
    database = sqlite_db.Database(path)
    try:
        for migration in schema.MIGRATIONS[:3]:
            with database.write() as conn:
                migrate_as_before(conn, [migration])
        with database.write() as conn:
            conn.execute(
                "INSERT INTO collections (name, fingerprint, model_id, dim, created) "
                "VALUES ('c', 'fp', 'm', 64, 'then')"
            )
            for i, meta in enumerate(('{"v": "1.10"}', '{"v": "1.1", "tags": ["01234", 5]}')):
                conn.execute(
                    "INSERT INTO documents (id, collection_id, doc_id, text, metadata, "
                    "content_hash, updated) VALUES (?, 1, ?, 't', ?, 'h', 'then')",
                    (i + 1, f"d{i}", meta),
                )
                conn.execute(
                    "INSERT INTO doc_meta SELECT ?, 1, j.key, j.value "
                    "FROM json_each(?) j WHERE j.type = 'text'",
                    (i + 1, meta),
                )
            coerced = conn.execute("SELECT typeof(value) FROM doc_meta").fetchall()
            assert [r[0] for r in coerced] == ["real", "real"]  # what the old schema did
    finally:
        database.close()
    with SQLiteStore(path) as s:
        rows = (
            s.db.reader()
            .execute("SELECT doc, key, value, typeof(value) FROM doc_meta ORDER BY doc, key, value")
            .fetchall()
        )
        assert [tuple(r) for r in rows] == [
            (1, "v", "1.10", "text"),
            (2, "tags", 5, "integer"),
            (2, "tags", "01234", "text"),
            (2, "v", "1.1", "text"),
        ]


def test_close_waits_for_a_statement_another_thread_is_running(tmp_path: Path) -> None:
    """At shutdown a cancelled task's worker thread may still be inside a query; closing the
    store must wait for it rather than fail with apsw's ThreadingViolationError."""
    database = sqlite_db.Database(tmp_path / "x.db")
    started = threading.Event()
    result: list[object] = []

    def long_query() -> None:
        conn = database.reader()
        started.set()
        rows = conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000000) "
            "SELECT count(*) FROM n"
        )
        result.append(rows.fetchone()[0])

    worker = threading.Thread(target=long_query)
    worker.start()
    started.wait(5)
    time.sleep(0.05)  # inside the statement
    database.close()  # must not raise
    worker.join(10)
    assert database.closed
    assert result == [3000000]  # the running statement finished undisturbed
    with pytest.raises(StoreError):
        database.reader()
