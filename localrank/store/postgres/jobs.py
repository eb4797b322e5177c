"""PostgreSQL statements: ingestion and reindex jobs shared by every daemon on the database
(`engine.JobSQL`).

A runner claims the oldest open job nobody holds with `FOR UPDATE SKIP LOCKED` (two daemons
polling at once never take the same job, and never wait for each other), and holds it for a
lease (`lease_until`, on the server's clock so daemons' clocks need not agree). The owner renews
the lease while it works (`renew_job`, and every progress write); a daemon that dies stops
renewing, and once the lease has run out the next claim takes the job over and resumes it at
its first pending item.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg import Connection

from localrank.store.rows import JOB_COLUMNS, Row, now_iso, prefixed

Conn = Connection[Any]


def insert_job(
    conn: Conn,
    job_id: str,
    collection: str,
    kind: str,
    total: int,
    params: str,
    items: Sequence[tuple[str, str]],
) -> None:
    stamp = now_iso()
    conn.execute(
        "INSERT INTO jobs (id, collection, kind, state, total, params, created, updated) "
        "VALUES (%s, %s, %s, 'queued', %s, %s, %s, %s)",
        (job_id, collection, kind, total, params, stamp, stamp),
    )
    if items:
        with (
            conn.cursor() as cur,
            cur.copy("COPY job_items (job, seq, doc_id, payload) FROM STDIN") as copy,
        ):
            for i, (doc_id, payload) in enumerate(items):
                copy.write_row((job_id, i, doc_id, payload))


def job_row(conn: Conn, job_id: str, *, lock: bool = False) -> Row | None:
    query = f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = %s"
    return conn.execute(query + (" FOR UPDATE" if lock else ""), (job_id,)).fetchone()


def job_rows(conn: Conn, limit: int, state: str | None) -> list[Row]:
    return conn.execute(
        f"SELECT {JOB_COLUMNS} FROM jobs WHERE (%(state)s::text IS NULL OR state = %(state)s) "
        "ORDER BY created DESC, seq DESC LIMIT %(limit)s",
        {"state": state, "limit": limit},
    ).fetchall()


def claim_job(
    conn: Conn, owner: str, lease_seconds: float, skip: Sequence[str], only: str | None
) -> Row | None:
    """Free: no owner, ours, or its lease ran out; rows another transaction is claiming right
    now are skipped."""
    return conn.execute(
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
        RETURNING {prefixed(JOB_COLUMNS, "j")}
        """,
        {
            "owner": owner,
            "skip": list(skip),
            "only": only,
            "lease": float(lease_seconds),
            "now": now_iso(),
        },
    ).fetchone()


def renew_job(conn: Conn, job_id: str, owner: str, lease_seconds: float) -> bool:
    row = conn.execute(
        "UPDATE jobs SET lease_until = now() + make_interval(secs => %s) "
        "WHERE id = %s AND owner = %s AND state = 'running' RETURNING id",
        (float(lease_seconds), job_id, owner),
    ).fetchone()
    return row is not None


def release_jobs(conn: Conn, owner: str, only: str | None) -> None:
    conn.execute(
        "UPDATE jobs SET state = 'queued', owner = NULL, lease_until = NULL "
        "WHERE owner = %(owner)s AND state = 'running' "
        "AND (%(only)s::text IS NULL OR id = %(only)s)",
        {"owner": owner, "only": only},
    )


def pending_items(conn: Conn, job_id: str, limit: int, after: int) -> list[Row]:
    return conn.execute(
        "SELECT seq, doc_id, payload FROM job_items WHERE job = %s AND state = 'pending' "
        "AND seq > %s ORDER BY seq LIMIT %s",
        (job_id, after, limit),
    ).fetchall()


def mark_items(conn: Conn, job_id: str, seqs: Sequence[int], state: str) -> list[int]:
    if not seqs:
        return []
    return [
        int(r[0])
        for r in conn.execute(
            "UPDATE job_items SET state = %s, payload = NULL "
            "WHERE job = %s AND seq = ANY(%s) AND state = 'pending' RETURNING seq",
            (state, job_id, [int(s) for s in seqs]),
        )
    ]


def advance_job(conn: Conn, job_id: str, done: int, failed: int, lease_seconds: float) -> None:
    conn.execute(
        "UPDATE jobs SET done = done + %s, failed = failed + %s, updated = %s, "
        "lease_until = now() + make_interval(secs => %s) WHERE id = %s",
        (done, failed, now_iso(), float(lease_seconds), job_id),
    )


def set_errors(conn: Conn, job_id: str, errors: str) -> None:
    conn.execute("UPDATE jobs SET errors = %s WHERE id = %s", (errors, job_id))


def close_job(conn: Conn, job_id: str, state: str) -> None:
    conn.execute(
        "UPDATE jobs SET state = %s, owner = NULL, lease_until = NULL, updated = %s WHERE id = %s",
        (state, now_iso(), job_id),
    )


def requeue_failed(conn: Conn, job_id: str, errors: str) -> None:
    conn.execute(
        "UPDATE jobs SET state = 'queued', owner = NULL, lease_until = NULL, errors = %s, "
        "updated = %s WHERE id = %s",
        (errors, now_iso(), job_id),
    )
