"""The store's decisions (`localrank.store.plans`), without a database: what an upsert does to a
document, how a job ends, what it keeps of its errors and when it may be retried, what a
reindex rebinds a collection to, which cached vectors fit, which words a keyword search uses.
Both engines carry these out (tests/test_store.py runs them there)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from store_helpers import make_doc, unit

from localrank.errors import Conflict, InvalidInput
from localrank.store.plans import (
    MAX_ERRORS_KEPT,
    MAX_QUERY_TERMS,
    ReindexTarget,
    StoredState,
    cache_excess,
    cache_rows,
    cached_vectors,
    check_job_kind,
    finished_state,
    newly_failed,
    plan_upsert,
    query_words,
    reindexed_settings,
    retry_errors,
    source_range,
    with_item_failures,
    with_job_error,
)
from localrank.store.records import Collection, ItemFailure, Job

COLLECTION = Collection(1, "c", "fp", "m", 64, "then", {"chunk_tokens": 256})
DOC = make_doc("a", unit(np.random.default_rng(0), 3), {"lang": "en"})


def stored_as(doc, **changes) -> StoredState:  # type: ignore[no-untyped-def]
    """What the store holds after writing `doc` (with `changes`), in 2 chunks."""
    state = StoredState(7, doc.content_hash, dict(doc.metadata), doc.source, 2)
    return dataclasses.replace(state, **changes)


# --- upsert ------------------------------------------------------------------------------------


def test_a_new_document_is_created_with_its_chunks() -> None:
    plan = plan_upsert(None, DOC, COLLECTION)
    assert (plan.status, plan.chunk_count, plan.writes) == ("created", 3, True)
    assert plan.chunks == DOC.chunks and plan.vectors is DOC.vectors


def test_the_same_document_again_is_unchanged() -> None:
    plan = plan_upsert(stored_as(DOC), DOC, COLLECTION)
    # the stored chunk count is reported, nothing is written
    assert (plan.status, plan.chunk_count, plan.writes, plan.chunks) == (
        "unchanged",
        2,
        False,
        None,
    )


@pytest.mark.parametrize(
    "changes", [{"metadata": {"lang": "fr"}}, {"source": "/elsewhere"}, {"source": None}]
)
def test_same_text_with_other_metadata_or_source_updates_only_those(changes: dict) -> None:
    plan = plan_upsert(stored_as(DOC, **changes), DOC, COLLECTION)
    assert (plan.status, plan.chunk_count, plan.writes, plan.chunks) == ("metadata", 2, True, None)


def test_changed_text_replaces_the_chunks() -> None:
    plan = plan_upsert(stored_as(DOC, content_hash="h-older"), DOC, COLLECTION)
    assert (plan.status, plan.chunk_count) == ("updated", 3)
    assert plan.chunks == DOC.chunks and plan.vectors is DOC.vectors


def test_a_document_prepared_without_chunks_keeps_the_stored_ones() -> None:
    # Prepared when its text matched the stored hash; another writer changed it meanwhile:
    # without chunks to write, only its metadata and source can be updated.
    bare = dataclasses.replace(DOC, chunks=None, vectors=None)
    assert plan_upsert(stored_as(DOC), bare, COLLECTION).status == "unchanged"
    raced = plan_upsert(stored_as(DOC, content_hash="h-other"), bare, COLLECTION)
    assert (raced.status, raced.chunk_count) == ("metadata", 2)
    with pytest.raises(ValueError, match="no chunks"):
        plan_upsert(None, bare, COLLECTION)  # new text must bring its chunks


def test_vectors_of_another_dimension_are_refused() -> None:
    other = make_doc("b", unit(np.random.default_rng(1), 2, 32))
    with pytest.raises(InvalidInput, match="32 dimensions"):
        plan_upsert(None, other, COLLECTION)
    with pytest.raises(InvalidInput):
        plan_upsert(stored_as(other, content_hash="h-older"), other, COLLECTION)


def test_files_under_a_folder_are_a_byte_range() -> None:
    base, low, high = source_range("/notes/")
    assert (base, low, high) == ("/notes", "/notes/", "/notes0")
    under = [
        s
        for s in ("/notes/a.md", "/notes/sub/b.md", "/notes0/c", "/notes-old/d")
        if low <= s < high
    ]
    assert under == ["/notes/a.md", "/notes/sub/b.md"]


# --- jobs --------------------------------------------------------------------------------------


def job(state: str = "running", done: int = 0, failed: int = 0, errors=()) -> Job:  # type: ignore[no-untyped-def]
    return Job("job_1", "c", "ingest", state, 5, done, failed, list(errors), {}, None, "t", "t")


def test_how_a_job_ends() -> None:
    assert finished_state(job(done=5), None) == "done"
    assert finished_state(job(done=0, failed=0), None) == "done"  # nothing to do
    assert finished_state(job(done=4, failed=1), None) == "done"
    assert finished_state(job(done=0, failed=5), None) == "failed"  # every item failed
    assert finished_state(job(done=5), "model gone") == "failed"
    assert finished_state(job(done=5), "") == "failed"  # an error, however empty


def test_a_failure_counts_once_and_only_while_its_item_was_pending() -> None:
    failed = [ItemFailure(1, "d1", "bad"), ItemFailure(2, "d2", "worse"), ItemFailure(1, "d1", "x")]
    assert newly_failed(failed, [1, 2]) == failed[:2]
    assert newly_failed(failed, [2]) == [failed[1]]
    assert newly_failed(failed, []) == []


def test_a_jobs_errors() -> None:
    kept = [{"id": f"d{i}", "message": "bad"} for i in range(MAX_ERRORS_KEPT - 1)]
    more = with_item_failures(kept, [ItemFailure(9, "x", "m1"), ItemFailure(10, "y", "m2")])
    assert len(more) == MAX_ERRORS_KEPT and more[-1] == {"id": "x", "message": "m1"}
    assert with_job_error([], "model gone") == [{"id": None, "message": "model gone"}]
    assert with_job_error(kept[:1], "") == kept[:1]  # an empty message adds nothing


def test_only_a_failed_job_is_retried_and_keeps_its_documents_failures() -> None:
    errors = [{"id": "d1", "message": "unreadable"}, {"id": None, "message": "store away"}]
    assert retry_errors(job("failed", errors=errors)) == errors[:1]
    for state in ("queued", "running", "done"):
        with pytest.raises(Conflict, match=state):
            retry_errors(job(state))


def test_job_kinds() -> None:
    assert check_job_kind("reindex") == "reindex"
    with pytest.raises(ValueError, match="ingest, reindex"):
        check_job_kind("compact")


# --- reindex, cache, keyword search ------------------------------------------------------------


def test_a_reindex_target_and_what_the_collection_remembers() -> None:
    target = ReindexTarget.from_params({"fingerprint": "fp2", "model_id": "m2", "dim": "32"})
    assert target == ReindexTarget("fp2", "m2", 32)
    settings = reindexed_settings(COLLECTION)
    assert settings == {"chunk_tokens": 256, "reindexed_from": "m"}
    assert COLLECTION.settings == {"chunk_tokens": 256}  # a new dict: the record is unchanged


def test_cache_rows_and_hits() -> None:
    vecs = unit(np.random.default_rng(2), 2, 4)
    rows = cache_rows([("a", vecs[0]), ("b", vecs[1]), ("a", vecs[0])])
    assert len(rows) == 2 and all(len(blob) == 16 for blob in rows.values())
    hashes = [*rows, b"missing"]
    found = {**rows, b"missing": b"\0" * 8}
    hits = cached_vectors(hashes, found, 4)
    assert set(hits) == {0, 1}  # the 2-float row is not a 4-d vector
    np.testing.assert_array_equal(hits[1], vecs[1])
    short = cached_vectors(hashes, found, 2)
    assert list(short) == [2] and short[2].tolist() == [0.0, 0.0]
    assert (cache_excess(10, 4), cache_excess(3, 4)) == (6, 0)


def test_the_words_of_a_keyword_query() -> None:
    assert query_words('Basil "NEAR" basil -tomato* AND x:y') == [
        "basil",
        "near",
        "tomato",
        "and",
        "x",
        "y",
    ]
    assert query_words("  ,;  ") == []
    many = " ".join(f"w{i}" for i in range(MAX_QUERY_TERMS + 10))
    assert query_words(many) == [f"w{i}" for i in range(MAX_QUERY_TERMS)]
