"""The steps of the store's writes and reads that run inside a caller's transaction, over an
engine's statements (`engine`): `sql_store.SQLStore` composes them into the protocol's methods,
and a test can run one under a write lock it holds. The decisions are `plans`'.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from localrank.errors import NotFound
from localrank.store import rows
from localrank.store.engine import C, CacheSQL, CatalogSQL, JobSQL
from localrank.store.filters import metadata_rows
from localrank.store.plans import (
    cache_excess,
    cache_rows,
    check_job_kind,
    finished_state,
    new_job_id,
    newly_failed,
    plan_upsert,
    with_item_failures,
    with_job_error,
)
from localrank.store.records import (
    Collection,
    ItemFailure,
    Job,
    PreparedDocument,
    StoredChunk,
    WriteResult,
)


def read_collection(sql: CatalogSQL[C], conn: C, name: str, *, lock: bool = False) -> Collection:
    """The collection called `name` (its row held for the transaction with `lock`), or
    NotFound."""
    row = sql.collection_row(conn, name, lock=lock)
    if row is None:
        raise NotFound(f"collection {name!r} does not exist", param="collection")
    return rows.collection(row)


def chunks(sql: CatalogSQL[C], conn: C, chunk_ids: Sequence[int]) -> list[StoredChunk]:
    if not len(chunk_ids):
        return []
    return rows.in_order([rows.stored_chunk(r) for r in sql.chunk_rows(conn, chunk_ids)], chunk_ids)


def upsert_documents(
    sql: CatalogSQL[C], conn: C, collection: Collection, docs: Sequence[PreparedDocument]
) -> list[WriteResult]:
    """Upsert documents (`plans.plan_upsert` decides what each needs). Changed documents'
    old chunks are removed at the collection's next generation."""
    generation = sql.bump_generation(conn, collection.id)
    stamp = rows.now_iso()
    results: list[WriteResult] = []
    for doc in docs:
        row = sql.stored_state(conn, collection.id, doc.doc_id)
        stored = None if row is None else rows.stored_state(row)
        plan = plan_upsert(stored, doc, collection)
        results.append(WriteResult(doc.doc_id, plan.status, plan.chunk_count))
        if not plan.writes:
            continue
        meta = rows.as_json(doc.metadata)
        if stored is None:
            doc_row = sql.insert_document(conn, collection.id, doc, meta, stamp)
        elif plan.status == "metadata":
            doc_row = stored.row_id
            sql.update_metadata(conn, doc_row, meta, doc.source, stamp)
        else:
            doc_row = stored.row_id
            sql.remove_chunks(conn, collection.id, doc_row, generation)
            sql.update_content(conn, doc_row, doc, meta, stamp)
        sql.write_filter_values(conn, collection.id, doc_row, metadata_rows(doc.metadata))
        if plan.chunks and plan.vectors is not None:
            sql.insert_chunks(conn, collection.id, doc_row, plan.chunks, plan.vectors)
    return results


def read_job(sql: JobSQL[C], conn: C, job_id: str, *, lock: bool = False) -> Job:
    """A job by id (its row held for the transaction with `lock`), or NotFound."""
    row = sql.job_row(conn, job_id, lock=lock)
    if row is None:
        raise NotFound(f"job {job_id!r} not found", param="job_id")
    return rows.job(row)


def create_job(
    sql: JobSQL[C],
    conn: C,
    collection_name: str,
    kind: str,
    items: Sequence[tuple[str, str]],
    params: dict[str, Any],
    total: int,
) -> Job:
    """A queued job with its items (doc_id, payload JSON), durable when the transaction
    commits."""
    job_id = new_job_id()
    sql.insert_job(
        conn, job_id, collection_name, check_job_kind(kind), total, json.dumps(params), items
    )
    return read_job(sql, conn, job_id)


def record_progress(
    sql: JobSQL[C],
    conn: C,
    job_id: str,
    lease_seconds: float,
    *,
    done: Sequence[int] = (),
    failed: Sequence[ItemFailure] = (),
    done_count: int | None = None,
) -> None:
    """Mark items done / failed, drop their payloads, count them and renew the owner's hold.
    Idempotent: only items still pending count, so a runner that lost its job to another one
    never counts an item twice. `done_count`: count that many instead (reindex chunks)."""
    newly_done = sql.mark_items(conn, job_id, done, "done")
    failures = newly_failed(failed, sql.mark_items(conn, job_id, [f.seq for f in failed], "failed"))
    if failures:
        errors = with_item_failures(read_job(sql, conn, job_id).errors, failures)
        sql.set_errors(conn, job_id, json.dumps(errors))
    count = len(newly_done) if done_count is None else done_count
    sql.advance_job(conn, job_id, count, len(failures), lease_seconds)


def finish_job(sql: JobSQL[C], conn: C, job_id: str, *, error: str | None = None) -> Job:
    """Close a job: failed with `error`, or when every item failed; else done."""
    current = read_job(sql, conn, job_id, lock=True)
    if error:
        sql.set_errors(conn, job_id, json.dumps(with_job_error(current.errors, error)))
    sql.close_job(conn, job_id, finished_state(current, error))
    return read_job(sql, conn, job_id)


def cache_put(
    sql: CacheSQL[C], conn: C, fingerprint: str, entries: Sequence[tuple[str, np.ndarray]]
) -> None:
    if entries:
        sql.cache_put(conn, fingerprint, cache_rows(entries), time.time())


def trim_cache(sql: CacheSQL[C], conn: C, max_rows: int) -> int:
    """Drop the least recently written cache rows beyond `max_rows`; how many."""
    excess = cache_excess(sql.cache_size(conn), max_rows)
    if excess:
        sql.drop_oldest_cache(conn, excess)
    return excess
