"""PostgreSQL: ingestion and reindex jobs shared by every daemon on the database.

A runner claims the oldest open job nobody holds with `FOR UPDATE SKIP LOCKED` (two daemons
polling at once never take the same job, and never wait for each other), and holds it for a
lease (`lease_until`, on the server's clock so daemons' clocks need not agree). The owner renews
the lease while it works (`renew_job`, and every progress write); a daemon that dies stops
renewing, and once the lease has run out the next claim takes the job over and resumes it at
its first pending item. Marking items done only counts items still pending, so a runner that
lost its lease and kept writing for a moment never counts a document twice (and re-writing a
document it already stored is an "unchanged" upsert).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from psycopg import Connection

from localrank.errors import Conflict, NotFound
from localrank.store.postgres.db import now_iso, one
from localrank.store.records import ItemFailure, Job, JobItem

Conn = Connection[Any]
MAX_ERRORS_KEPT = 1000
_COLUMNS = (
    "id, collection, kind, state, total, done, failed, errors, params, owner, created, updated"
)


def _job(row: Any) -> Job:
    return Job(
        row[0],
        row[1],
        row[2],
        row[3],
        int(row[4]),
        int(row[5]),
        int(row[6]),
        json.loads(row[7]),
        json.loads(row[8]),
        row[9],
        row[10],
        row[11],
    )


def create_job(
    conn: Conn,
    *,
    collection: str,
    kind: str,
    items: Sequence[tuple[str, str]],
    params: dict[str, Any] | None = None,
    total: int | None = None,
) -> str:
    job_id = "job_" + uuid.uuid4().hex
    stamp = now_iso()
    conn.execute(
        "INSERT INTO jobs (id, collection, kind, state, total, params, created, updated) "
        "VALUES (%s, %s, %s, 'queued', %s, %s, %s, %s)",
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
    if items:
        with (
            conn.cursor() as cur,
            cur.copy("COPY job_items (job, seq, doc_id, payload) FROM STDIN") as copy,
        ):
            for i, (doc_id, payload) in enumerate(items):
                copy.write_row((job_id, i, doc_id, payload))
    return job_id


def get_job(conn: Conn, job_id: str) -> Job:
    row = conn.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = %s", (job_id,)).fetchone()
    if row is None:
        raise NotFound(f"job {job_id!r} not found", param="job_id")
    return _job(row)


def list_jobs(conn: Conn, *, limit: int = 50, state: str | None = None) -> list[Job]:
    return [
        _job(r)
        for r in conn.execute(
            f"SELECT {_COLUMNS} FROM jobs WHERE (%(state)s::text IS NULL OR state = %(state)s) "
            "ORDER BY created DESC, seq DESC LIMIT %(limit)s",
            {"state": state, "limit": int(limit)},
        )
    ]


def claim_job(
    conn: Conn,
    owner: str,
    lease_seconds: float,
    *,
    skip: Sequence[str] = (),
    only: str | None = None,
) -> Job | None:
    """Take the oldest open job that is free (no owner, ours, or its lease ran out), skipping
    rows another transaction is claiming right now."""
    row = conn.execute(
        f"""
        WITH free AS (
            SELECT id FROM jobs
            WHERE state IN ('queued', 'running')
              AND (owner IS NULL OR owner = %(owner)s OR lease_until < now())
              AND NOT (id = ANY(%(skip)s))
              AND (%(only)s::text IS NULL OR id = %(only)s)
            ORDER BY created, seq
            LIMIT 1
            FOR UPDATE SKIP LOCKED
        )
        UPDATE jobs j SET state = 'running', owner = %(owner)s,
            lease_until = now() + make_interval(secs => %(lease)s), updated = %(now)s
        FROM free WHERE j.id = free.id
        RETURNING {", ".join("j." + c for c in _COLUMNS.split(", "))}
        """,
        {
            "owner": owner,
            "skip": list(skip),
            "only": only,
            "lease": float(lease_seconds),
            "now": now_iso(),
        },
    ).fetchone()
    return None if row is None else _job(row)


def renew_job(conn: Conn, job_id: str, owner: str, lease_seconds: float) -> bool:
    row = conn.execute(
        "UPDATE jobs SET lease_until = now() + make_interval(secs => %s) "
        "WHERE id = %s AND owner = %s AND state = 'running' RETURNING id",
        (float(lease_seconds), job_id, owner),
    ).fetchone()
    return row is not None


def pending_items(conn: Conn, job_id: str, limit: int, *, after: int = -1) -> list[JobItem]:
    return [
        JobItem(int(r[0]), r[1], r[2])
        for r in conn.execute(
            "SELECT seq, doc_id, payload FROM job_items WHERE job = %s AND state = 'pending' "
            "AND seq > %s ORDER BY seq LIMIT %s",
            (job_id, int(after), int(limit)),
        )
    ]


def record_progress(
    conn: Conn,
    job_id: str,
    lease_seconds: float,
    *,
    done: Sequence[int] = (),
    failed: Sequence[ItemFailure] = (),
    done_count: int | None = None,
) -> None:
    """In the caller's transaction: mark pending items done / failed (only those still
    pending count), drop their payloads, bump the counters, extend the lease."""
    newly_done = len(
        conn.execute(
            "UPDATE job_items SET state = 'done', payload = NULL "
            "WHERE job = %s AND seq = ANY(%s) AND state = 'pending' RETURNING seq",
            (job_id, [int(s) for s in done]),
        ).fetchall()
    )
    hit = {
        int(r[0])
        for r in conn.execute(
            "UPDATE job_items SET state = 'failed', payload = NULL "
            "WHERE job = %s AND seq = ANY(%s) AND state = 'pending' RETURNING seq",
            (job_id, [f.seq for f in failed]),
        )
    }
    new_failures = [f for f in failed if f.seq in hit]
    if new_failures:
        errors = json.loads(one(conn, "SELECT errors FROM jobs WHERE id = %s", (job_id,)))
        errors.extend({"id": f.doc_id, "message": f.message} for f in new_failures)
        conn.execute(
            "UPDATE jobs SET errors = %s WHERE id = %s",
            (json.dumps(errors[:MAX_ERRORS_KEPT]), job_id),
        )
    conn.execute(
        "UPDATE jobs SET done = done + %s, failed = failed + %s, updated = %s, "
        "lease_until = now() + make_interval(secs => %s) WHERE id = %s",
        (
            newly_done if done_count is None else done_count,
            len(new_failures),
            now_iso(),
            float(lease_seconds),
            job_id,
        ),
    )


def finish_job(conn: Conn, job_id: str, state: str, message: str | None = None) -> None:
    if message:
        errors = json.loads(one(conn, "SELECT errors FROM jobs WHERE id = %s", (job_id,)))
        errors.append({"id": None, "message": message})
        conn.execute("UPDATE jobs SET errors = %s WHERE id = %s", (json.dumps(errors), job_id))
    conn.execute(
        "UPDATE jobs SET state = %s, owner = NULL, lease_until = NULL, updated = %s WHERE id = %s",
        (state, now_iso(), job_id),
    )


def requeue_job(conn: Conn, job_id: str) -> None:
    conn.execute(
        "UPDATE jobs SET state = 'queued', owner = NULL, lease_until = NULL "
        "WHERE id = %s AND state = 'running'",
        (job_id,),
    )


def retry_job(conn: Conn, job_id: str) -> None:
    """Queue a failed job again (in the caller's transaction): it resumes at its first pending
    item. Its own errors go (they said why it stopped), its documents' failures stay."""
    row = conn.execute(
        "SELECT state, errors FROM jobs WHERE id = %s FOR UPDATE", (job_id,)
    ).fetchone()
    if row is None:
        raise NotFound(f"job {job_id!r} not found", param="job_id")
    state, errors = row[0], json.loads(row[1])
    if state != "failed":
        raise Conflict(f"job {job_id} is {state}: only a failed job can be retried")
    conn.execute(
        "UPDATE jobs SET state = 'queued', owner = NULL, lease_until = NULL, errors = %s, "
        "updated = %s WHERE id = %s",
        (json.dumps([e for e in errors if e.get("id") is not None]), now_iso(), job_id),
    )


def release_jobs(conn: Conn, owner: str) -> None:
    conn.execute(
        "UPDATE jobs SET owner = NULL, lease_until = NULL WHERE owner = %s AND state = 'running'",
        (owner,),
    )
