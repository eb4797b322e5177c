"""SQLite: ingestion jobs as rows: created with every pending document's payload in one transaction
(so acknowledging a job id means its documents are on disk), claimed by one runner at a time,
and advanced in the same transaction that stores each batch of documents.

A job is claimed by an owner (`host:pid:nonce`) that refreshes a heartbeat. Another runner may
take it over when the heartbeat is stale or the owner's process is gone (kill -9), which is
how a job resumes after a crash.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Sequence
from typing import Any

import apsw

from localrank.errors import Conflict, NotFound
from localrank.store.records import ItemFailure, Job, JobItem
from localrank.store.sqlite.db import Database, now_iso, scalar

STALE_SECONDS = 600.0
MAX_ERRORS_KEPT = 1000


def _owner_alive(owner: str) -> bool:
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return True  # cannot tell: rely on the heartbeat
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_COLUMNS = (
    "id, collection, kind, state, total, done, failed, errors, params, owner, created, updated"
)


def _job(row: tuple[Any, ...]) -> Job:
    return Job(
        row[0],
        row[1],
        row[2],
        row[3],
        row[4],
        row[5],
        row[6],
        json.loads(row[7]),
        json.loads(row[8]),
        row[9],
        row[10],
        row[11],
    )


def create_job(
    conn: apsw.Connection,
    *,
    collection: str,
    kind: str,
    items: Sequence[tuple[str, str]],
    params: dict[str, Any] | None = None,
    total: int | None = None,
) -> str:
    """Insert a queued job and its items (doc_id, payload JSON) in the caller's transaction."""
    job_id = "job_" + uuid.uuid4().hex
    stamp = now_iso()
    conn.execute(
        "INSERT INTO jobs (id, collection, kind, state, total, params, created, updated) "
        "VALUES (?, ?, ?, 'queued', ?, ?, ?, ?)",
        (
            job_id,
            collection,
            kind,
            len(items) if total is None else total,
            json.dumps(params or {}),
            stamp,
            stamp,
        ),
    )
    conn.executemany(
        "INSERT INTO job_items (job, seq, doc_id, payload) VALUES (?, ?, ?, ?)",
        [(job_id, i, doc_id, payload) for i, (doc_id, payload) in enumerate(items)],
    )
    return job_id


def get_job(conn: apsw.Connection, job_id: str) -> Job:
    """A job by id, or NotFound."""
    row = conn.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None:
        raise NotFound(f"job {job_id!r} not found", param="job_id")
    return _job(row)


def list_jobs(conn: apsw.Connection, *, limit: int = 50, state: str | None = None) -> list[Job]:
    """Most recent jobs first, optionally only those in `state`."""
    return [
        _job(r)
        for r in conn.execute(
            f"SELECT {_COLUMNS} FROM jobs WHERE (?1 IS NULL OR state = ?1) "
            "ORDER BY created DESC, rowid DESC LIMIT ?2",
            (state, int(limit)),
        )
    ]


def claim_job(
    db: Database, owner: str, *, skip: Sequence[str] = (), only: str | None = None
) -> Job | None:
    """Take the oldest unfinished job nobody live is working on (or one already ours);
    with `only`, that job or nothing."""
    now = time.time()
    with db.write() as conn:
        rows = conn.execute(
            f"SELECT {_COLUMNS}, heartbeat FROM jobs WHERE state IN ('queued', 'running') "
            "ORDER BY created, rowid"
        ).fetchall()
        for row in rows:
            job = _job(row[:-1])
            if job.id in skip or (only is not None and job.id != only):
                continue
            heartbeat = float(row[-1] or 0.0)
            # A live owner on this host keeps its job however slow a batch is; the heartbeat
            # only decides for owners we cannot check (or a pid reused after a reboot).
            free = (
                job.owner is None
                or job.owner == owner
                or not _owner_alive(job.owner)
                or now - heartbeat > STALE_SECONDS
            )
            if not free:
                continue
            conn.execute(
                "UPDATE jobs SET state = 'running', owner = ?, heartbeat = ?, updated = ? "
                "WHERE id = ?",
                (owner, now, now_iso(), job.id),
            )
            return get_job(conn, job.id)
    return None


def pending_items(
    conn: apsw.Connection, job_id: str, limit: int, *, after: int = -1
) -> list[JobItem]:
    """Up to `limit` pending items of a job with seq > `after`, in submission order (`after`
    lets a pipeline read ahead of its own uncommitted batches)."""
    return [
        JobItem(int(r[0]), r[1], r[2])
        for r in conn.execute(
            "SELECT seq, doc_id, payload FROM job_items WHERE job = ? AND state = 'pending' "
            "AND seq > ? ORDER BY seq LIMIT ?",
            (job_id, int(after), int(limit)),
        )
    ]


def record_progress(
    conn: apsw.Connection,
    job_id: str,
    *,
    done: Sequence[int] = (),
    failed: Sequence[ItemFailure] = (),
    done_count: int | None = None,
) -> None:
    """In the caller's transaction: mark items done / failed, drop their payloads, bump the
    counters and the heartbeat. Idempotent: only items still pending count, so a runner that
    lost its job to another one never counts an item twice."""
    newly_done = sum(
        conn.execute(
            "UPDATE job_items SET state = 'done', payload = NULL "
            "WHERE job = ? AND seq = ? AND state = 'pending' RETURNING seq",
            (job_id, s),
        ).fetchone()
        is not None
        for s in done
    )
    failed = [
        f
        for f in failed
        if conn.execute(
            "UPDATE job_items SET state = 'failed', payload = NULL "
            "WHERE job = ? AND seq = ? AND state = 'pending' RETURNING seq",
            (job_id, f.seq),
        ).fetchone()
    ]
    if failed:
        errors = json.loads(scalar(conn, "SELECT errors FROM jobs WHERE id = ?", (job_id,)))
        errors.extend({"id": f.doc_id, "message": f.message} for f in failed)
        conn.execute(
            "UPDATE jobs SET errors = ? WHERE id = ?",
            (json.dumps(errors[:MAX_ERRORS_KEPT]), job_id),
        )
    conn.execute(
        "UPDATE jobs SET done = done + ?, failed = failed + ?, heartbeat = ?, updated = ? "
        "WHERE id = ?",
        (
            newly_done if done_count is None else done_count,
            len(failed),
            time.time(),
            now_iso(),
            job_id,
        ),
    )


def finish_job(conn: apsw.Connection, job_id: str, state: str, message: str | None = None) -> None:
    """Mark a job done or failed (in the caller's transaction), with an optional job error."""
    if message:
        errors = json.loads(scalar(conn, "SELECT errors FROM jobs WHERE id = ?", (job_id,)))
        errors.append({"id": None, "message": message})
        conn.execute("UPDATE jobs SET errors = ? WHERE id = ?", (json.dumps(errors), job_id))
    conn.execute(
        "UPDATE jobs SET state = ?, owner = NULL, updated = ? WHERE id = ?",
        (state, now_iso(), job_id),
    )


def requeue_job(db: Database, job_id: str) -> None:
    """Hand a running job back to the queue."""
    with db.write() as conn:
        conn.execute(
            "UPDATE jobs SET state = 'queued', owner = NULL WHERE id = ? AND state = 'running'",
            (job_id,),
        )


def retry_job(conn: apsw.Connection, job_id: str) -> None:
    """Queue a failed job again (in the caller's transaction): it resumes at its first pending
    item. Its own errors go (they said why it stopped), its documents' failures stay."""
    job = get_job(conn, job_id)
    if job.state != "failed":
        raise Conflict(f"job {job_id} is {job.state}: only a failed job can be retried")
    conn.execute(
        "UPDATE jobs SET state = 'queued', owner = NULL, heartbeat = NULL, errors = ?, "
        "updated = ? WHERE id = ?",
        (json.dumps([e for e in job.errors if e.get("id") is not None]), now_iso(), job_id),
    )


def release_jobs(db: Database, owner: str) -> None:
    """On clean shutdown: hand our running jobs back so the next runner resumes at once."""
    with db.write() as conn:
        conn.execute(
            "UPDATE jobs SET owner = NULL, heartbeat = NULL WHERE owner = ? AND state = 'running'",
            (owner,),
        )


def renew_job(db: Database, job_id: str, owner: str) -> bool:
    """Refresh the heartbeat of a job `owner` still runs; False when it is no longer its own."""
    with db.write() as conn:
        row = conn.execute(
            "UPDATE jobs SET heartbeat = ? WHERE id = ? AND owner = ? AND state = 'running' "
            "RETURNING id",
            (time.time(), job_id, owner),
        ).fetchone()
        return row is not None
