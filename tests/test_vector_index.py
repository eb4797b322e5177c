"""The in-memory binary index (store/sqlite/vector_index.py) and its registry: the three-stage
scan (coarse Hamming on a column layout, full Hamming, asymmetric), filters inside the scan,
snapshots over shared append-only buffers, tombstones and repacking, epoch reloads, the
preload that makes the first search after a start as fast as the rest, and the `codes` table
the index loads from (and the migration that made it)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from store_helpers import make_doc, migrate_as_before, unit

from localrank.collections.search import parse_filter
from localrank.store import SQLiteStore
from localrank.store.sqlite import schema
from localrank.store.sqlite.db import Database
from localrank.store.sqlite.index_registry import IndexRegistry
from localrank.store.sqlite.maintenance import counts, integrity_check
from localrank.store.sqlite.vector_index import (
    BinaryIndex,
    Stages,
    as_words,
    coarse_distances,
    hamming,
    nearest,
    quantize,
)

# Small shortlists, so the coarse stage really prunes on a few thousand rows.
SMALL = Stages(coarse_factor=4, min_coarse=300, shortlist_factor=2, min_shortlist=100)


def clustered(
    rng: np.random.Generator, n: int, dim: int, clusters: int, noise: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around random unit centres (search_bench's distribution), and labels."""
    centres = unit(rng, clusters, dim)
    labels = rng.integers(0, clusters, n)
    v = centres[labels] + rng.standard_normal((n, dim)).astype(np.float32) * (noise / np.sqrt(dim))
    return v / np.linalg.norm(v, axis=1, keepdims=True), labels


def index_of(vectors: np.ndarray, docs: np.ndarray | None = None, first_id: int = 1) -> BinaryIndex:
    ids = np.arange(first_id, first_id + len(vectors), dtype=np.int64)
    docs = ids if docs is None else docs
    return BinaryIndex.empty(1, 0, 0, vectors.shape[1]).with_rows(ids, docs, quantize(vectors))


def exact_top(vectors: np.ndarray, ids: np.ndarray, query: np.ndarray, k: int = 10) -> set[int]:
    return set(ids[np.argsort(-(vectors @ query))[:k]].tolist())


# --- the stages ----------------------------------------------------------------------------


def test_nearest_is_the_smallest_distances_ties_to_earlier_rows() -> None:
    rng = np.random.default_rng(0)
    dist = rng.integers(0, 40, 5000).astype(np.uint16)
    for size in (1, 7, 100, 4999):
        got = nearest(dist, size)
        assert len(got) == size == len(set(got.tolist()))
        want = np.argsort(dist, kind="stable")[:size]
        assert sorted(got.tolist()) == sorted(want.tolist())
    assert sorted(nearest(dist, 6000).tolist()) == list(range(5000))


def test_coarse_distances_are_the_hamming_distances_of_the_first_words() -> None:
    rng = np.random.default_rng(1)
    words = as_words(quantize(unit(rng, 3000, 1024)))
    query = words[5].copy()
    words[7] = ~query  # every one of the 256 coarse bits differs: must not wrap around in uint8
    columns = np.ascontiguousarray(words[:, :4].T)
    got = coarse_distances(columns, query[:4])
    assert got.dtype == np.uint16 and got[5] == 0 and got[7] == 256
    assert np.array_equal(got, hamming(words[:, :4], query[:4]))


def test_three_stage_recall_on_clustered_data() -> None:
    rng = np.random.default_rng(2)
    data, _ = clustered(rng, 6000, 512, 150)
    idx = index_of(data)
    # Queries from the data's distribution: near a stored vector, inside its cluster.
    queries = data[rng.integers(0, 6000, 30)] + 0.02 * unit(rng, 30, 512)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    recalls = []
    for q in queries:
        cands = idx.candidates(q, 50, stages=SMALL)
        assert len(cands) == 50 and len(set(cands.tolist())) == 50
        rescored = exact_top(data[cands - 1], cands, q)
        recalls.append(len(rescored & exact_top(data, idx.ids, q)) / 10)
    assert np.mean(recalls) >= 0.9
    # The stages cut: stage 1 keeps 300 of 6000 rows here, so this exercised the coarse scan.
    assert SMALL.sizes(50, 6000, whole=False) == (300, 100)


def test_short_codes_skip_the_second_stage_and_still_find_the_neighbours() -> None:
    rng = np.random.default_rng(4)
    data = unit(rng, 4000, 96)  # 96 bits: two words, all of them in stage 1
    idx = index_of(data)
    assert idx.coarse.shape == (2, 4000)
    assert SMALL.sizes(20, 4000, whole=True) == (100, 100)
    q = data[123]
    assert 124 in idx.candidates(q, 20, stages=SMALL).tolist()


@pytest.mark.parametrize("share", [0.15, 0.6])  # gather the allowed rows / mask the full scan
def test_filters_apply_inside_the_coarse_scan(share: float) -> None:
    rng = np.random.default_rng(5)
    n = 5000
    query = unit(rng, 1, 256)[0]
    near = query + 0.1 * unit(rng, n, 256)
    data = near / np.linalg.norm(near, axis=1, keepdims=True)
    docs = np.arange(n, dtype=np.int64)
    allowed = np.flatnonzero(rng.random(n) < share)
    # The allowed documents are the farthest from the query: an unfiltered top-k holds none.
    data[allowed] = -data[allowed]
    idx = index_of(data, docs)
    assert len(allowed) > SMALL.sizes(40, len(allowed), whole=False)[0]  # stage 1 runs
    got = idx.candidates(query, 40, allowed_docs=allowed, stages=SMALL)
    assert len(got) == 40  # never short
    assert set(idx.docs[got - 1].tolist()) <= set(allowed.tolist())
    assert len(idx.candidates(query, 40, allowed_docs=allowed[:3], stages=SMALL)) == 3
    assert len(idx.candidates(query, 40, allowed_docs=np.array([n + 5]), stages=SMALL)) == 0


# --- snapshots -----------------------------------------------------------------------------


def test_appends_never_change_what_an_older_snapshot_reads() -> None:
    rng = np.random.default_rng(6)
    a = index_of(unit(rng, 10, 128))
    a_ids, a_words = a.ids.copy(), a.words.copy()
    b = a.with_rows(np.arange(11, 16), np.arange(11, 16), quantize(unit(rng, 5, 128)))
    assert b.buffers is a.buffers  # room to spare: appended in place, not copied
    assert (a.n, b.n) == (10, 15) and np.array_equal(a.ids, a_ids)
    # Appending to the older snapshot again must not overwrite b's rows 10..14.
    b_words = b.words.copy()
    c = a.with_rows(np.arange(11, 13), np.arange(11, 13), quantize(unit(rng, 2, 128)))
    assert c.buffers is not a.buffers and c.n == 12
    assert np.array_equal(b.words, b_words) and np.array_equal(a.words, a_words)
    # Growing past the capacity copies into new buffers; old snapshots keep theirs.
    big = b.with_rows(np.arange(16, 5016), np.arange(16, 5016), quantize(unit(rng, 5000, 128)))
    assert big.buffers is not b.buffers and big.n == 5015
    assert np.array_equal(big.ids[:15], b.ids) and np.array_equal(big.coarse[:, :15], b.coarse)
    assert np.array_equal(big.coarse, big.words[:, :2].T)


def test_deleted_rows_are_never_candidates_and_repack_at_a_quarter() -> None:
    rng = np.random.default_rng(7)
    data = unit(rng, 400, 128)
    idx = index_of(data)
    dead = np.arange(1, 81)  # 20%: masked
    masked = idx.with_deleted(dead).at_generation(1)
    assert masked.n == 400 and masked.size == 320 and masked.buffers is idx.buffers
    got = masked.candidates(data[0], 400, stages=SMALL)
    assert len(got) == 320 and not set(got.tolist()) & set(dead.tolist())
    # An id that was never in the snapshot (added and deleted between refreshes) is ignored.
    assert masked.with_deleted(np.array([10_000])) is masked
    packed = masked.with_deleted(np.arange(81, 121)).at_generation(2)  # 30%: repacked
    assert packed.n == packed.size == 280 and packed.ids[0] == 121
    assert np.array_equal(packed.words, idx.words[120:])
    assert 1 not in packed.candidates(data[0], 10, stages=SMALL).tolist()


# --- the registry: catching up with the database, preloading -------------------------------


def _snapshot_rows(idx: BinaryIndex) -> tuple[list[int], list[int], np.ndarray]:
    keep = idx.alive
    return idx.ids[keep].tolist(), idx.docs[keep].tolist(), idx.words[keep]


def test_incremental_catch_up_equals_a_fresh_load(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    with SQLiteStore(tmp_path / "db.sqlite") as store:
        coll = store.create_collection("c", fingerprint="fp", model_id="m", dim=320, settings={})
        store.write_documents(
            "c", "fp", "m", [make_doc(f"d{i}", unit(rng, 5, 320)) for i in range(40)]
        )
        first = store.indexes.get(coll.id)
        assert first is not None and first.size == 200
        store.write_documents("c", "fp", "m", [make_doc("d3", unit(rng, 2, 320), text="new")])
        store.delete_documents("c", ["d7"])
        store.write_documents(
            "c", "fp", "m", [make_doc(f"e{i}", unit(rng, 3, 320)) for i in range(10)]
        )
        caught_up = store.indexes.get(coll.id)
        assert caught_up is not None and caught_up.epoch == first.epoch
        assert caught_up.size == 200 - 5 + 2 - 5 + 30
        fresh = IndexRegistry(store.db).get(coll.id)
        assert fresh is not None
        got, want = _snapshot_rows(caught_up), _snapshot_rows(fresh)
        assert got[:2] == want[:2] and np.array_equal(got[2], want[2])
        # The older snapshot still describes the collection as it was.
        assert first.size == 200 and first.n == 200


def test_epoch_change_reloads_into_fresh_buffers(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    with SQLiteStore(tmp_path / "db.sqlite") as store:
        coll = store.create_collection("c", fingerprint="fp", model_id="m", dim=64, settings={})
        store.write_documents(
            "c", "fp", "m", [make_doc(f"d{i}", unit(rng, 4, 64)) for i in range(10)]
        )
        assert store.indexes.get(coll.id) is not None
        for i in range(2):
            store.delete_documents("c", [f"d{i}"])
        before = store.indexes.get(coll.id)
        assert before is not None and before.n == 40 and before.size == 32  # masked, not packed
        store.compact(cache_max_rows=10)  # drops the tombstones, bumps the epoch
        after = store.indexes.get(coll.id)
        assert after is not None and after.epoch == before.epoch + 1
        assert after.buffers is not before.buffers and after.n == after.size == 32


class GatedRegistry(IndexRegistry):
    """Holds the preload thread at its first page until `gate` opens (other threads pass)."""

    def __init__(self, store: SQLiteStore, gate: threading.Event) -> None:
        super().__init__(store.db)
        self.gate = gate
        self.entered = threading.Event()

    def _pages(self, conn, collection_id: int, after: int) -> Iterator:  # type: ignore[no-untyped-def, override]
        for page in super()._pages(conn, collection_id, after):
            if threading.current_thread().name == "preload":
                self.entered.set()
                self.gate.wait(30)
            yield page


def test_searches_during_the_preload_are_answered_correctly(tmp_path: Path) -> None:
    rng = np.random.default_rng(10)
    store = SQLiteStore(tmp_path / "db.sqlite")
    try:
        vecs = {}
        for name in ("a", "b"):
            store.create_collection(name, fingerprint="fp", model_id="m", dim=64, settings={})
            vecs[name] = unit(rng, 30, 64)
            store.write_documents(
                name, "fp", "m", [make_doc(f"{name}{i}", vecs[name][i : i + 1]) for i in range(30)]
            )
        assert store.search_readiness().to_api() == {"ready": False, "loaded": 0, "total": 0}
        gate = threading.Event()
        store.indexes = registry = GatedRegistry(store, gate)
        preload = threading.Thread(target=store.prepare_search, name="preload")
        preload.start()
        assert registry.entered.wait(10)  # the preload is inside collection a's load
        assert store.search_readiness().to_api() == {"ready": False, "loaded": 0, "total": 2}

        # b is not loaded yet: its search loads it, without waiting for a.
        b = store.get_collection("b")
        hits = store.vector_candidates(b, vecs["b"][4], 3, candidates=30)
        assert store.fetch_chunks([hits[0][0]])[0].document_id == "b4"
        assert hits[0][1] == pytest.approx(1.0, abs=1e-5)

        # a's search waits for the preload's load of a, then answers from it.
        a = store.get_collection("a")
        result: list = []
        search = threading.Thread(
            target=lambda: result.append(store.vector_candidates(a, vecs["a"][9], 3, candidates=30))
        )
        search.start()
        search.join(0.3)
        assert search.is_alive() and not result  # waiting, not answering from half an index
        gate.set()
        search.join(10)
        preload.join(10)
        assert store.fetch_chunks([result[0][0][0]])[0].document_id == "a9"
        assert store.search_readiness().to_api() == {"ready": True, "loaded": 2, "total": 2}
    finally:
        gate.set()
        store.close()


def test_close_stops_a_running_preload(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    store = SQLiteStore(tmp_path / "db.sqlite")
    for name in ("a", "b"):
        store.create_collection(name, fingerprint="fp", model_id="m", dim=64, settings={})
        store.write_documents(name, "fp", "m", [make_doc("x", unit(rng, 3, 64))])
    gate = threading.Event()
    store.indexes = registry = GatedRegistry(store, gate)
    preload = threading.Thread(target=store.prepare_search, name="preload")
    preload.start()
    assert registry.entered.wait(10)
    closer = threading.Thread(target=store.close)
    closer.start()
    closer.join(0.3)
    assert closer.is_alive()  # close waits for the preload to let go of its connection
    gate.set()
    closer.join(10)
    preload.join(10)
    assert not closer.is_alive() and not preload.is_alive()
    # a was being loaded when close came; b never started: stopped, not failed.
    assert store.search_readiness().to_api() == {"ready": False, "loaded": 1, "total": 2}


def test_filtered_search_through_the_store_uses_the_scan_mask(tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    with SQLiteStore(tmp_path / "db.sqlite") as store:
        coll = store.create_collection("c", fingerprint="fp", model_id="m", dim=64, settings={})
        query = unit(rng, 1, 64)[0]
        near = [make_doc(f"n{i}", (query + 0.05 * unit(rng, 1, 64)), {"k": "n"}) for i in range(50)]
        far = [make_doc(f"f{i}", unit(rng, 1, 64), {"k": "f"}) for i in range(12)]
        store.write_documents("c", "fp", "m", near + far)
        hits = store.vector_candidates(coll, query, 10, candidates=10, flt=parse_filter({"k": "f"}))
        assert len(hits) == 10
        assert {c.document_id for c in store.fetch_chunks([h for h, _ in hits])} <= {
            f"f{i}" for i in range(12)
        }


# --- where the codes live: their own table ---------------------------------------------------


def test_upgrade_moves_codes_out_of_vectors(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    rng = np.random.default_rng(13)
    vecs = unit(rng, 6, 64)
    names = [name for name, _ in schema.MIGRATIONS]
    db = Database(path)
    with db.write() as conn:  # a store as the releases before 0006_vector_codes left it
        migrate_as_before(conn, schema.MIGRATIONS[: names.index("0006_vector_codes")])
        conn.execute(
            "INSERT INTO collections (name, fingerprint, model_id, dim, created) "
            "VALUES ('c', 'fp', 'm', 64, 'then')"
        )
        for d in range(2):
            conn.execute(
                "INSERT INTO documents (collection_id, doc_id, text, content_hash, updated) "
                "VALUES (1, ?, 'text', 'h', 'then')",
                (f"d{d}",),
            )
        for i, v in enumerate(vecs):
            conn.execute(
                "INSERT INTO chunks (doc, collection_id, ordinal, text, char_start, char_end, "
                "line_start, line_end) VALUES (?, 1, ?, ?, 0, 4, 1, 1)",
                (1 + i % 2, i, f"chunk {i}"),
            )
            conn.execute(
                "INSERT INTO vectors (chunk, embedding, code) VALUES (?, ?, ?)",
                (i + 1, v.tobytes(), quantize(v)[0].tobytes()),
            )
    db.close()

    with SQLiteStore(path) as store:
        conn = store.db.reader()
        rows = conn.execute("SELECT chunk, collection_id, doc, code FROM codes ORDER BY chunk")
        assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
            (i + 1, 1, 1 + i % 2, quantize(v)[0].tobytes()) for i, v in enumerate(vecs)
        ]
        c = counts(conn)
        assert c["chunks"] == c["vectors"] == c["codes"] == 6 and c["chunks_without_code"] == 0
        assert integrity_check(conn) == ["ok"]
        coll = store.get_collection("c")
        hits = store.vector_candidates(coll, vecs[4], 1, candidates=6)
        assert hits[0][0] == 5 and hits[0][1] == pytest.approx(1.0, abs=1e-5)
        # New writes go to both tables; deletes cascade to both.
        store.write_documents("c", "fp", "m", [make_doc("d2", unit(rng, 2, 64))])
        store.delete_documents("c", ["d0"])
        c = counts(conn)
        assert c["chunks"] == c["vectors"] == c["codes"] == 5 and c["chunks_without_code"] == 0


def test_reindex_swaps_the_codes_with_the_vectors(tmp_path: Path) -> None:
    rng = np.random.default_rng(14)
    with SQLiteStore(tmp_path / "db.sqlite") as store:
        coll = store.create_collection("c", fingerprint="fp", model_id="m", dim=64, settings={})
        store.write_documents("c", "fp", "m", [make_doc("d", unit(rng, 5, 64))])
        assert store.indexes.get(coll.id) is not None
        params = {"fingerprint": "fp2", "model_id": "m2", "dim": 32}
        job = store.create_job("c", "reindex", params=params)
        todo = store.chunks_to_reindex(coll, job.id, 100)
        new = unit(rng, len(todo), 32)
        store.stage_reindexed(job.id, [c for c, _ in todo], new, fingerprint="fp2")
        assert store.swap_reindexed("c", job.id)
        idx = store.indexes.get(coll.id)
        assert idx is not None and idx.buffers.n_words == 1  # 32-d codes now
        assert np.array_equal(idx.words, as_words(quantize(new)))
        c = counts(store.db.reader())
        assert c["chunks"] == c["codes"] == 5 and c["chunks_without_code"] == 0
        hits = store.vector_candidates(store.get_collection("c"), new[3], 1, candidates=5)
        assert hits[0][0] == todo[3][0] and hits[0][1] == pytest.approx(1.0, abs=1e-5)
