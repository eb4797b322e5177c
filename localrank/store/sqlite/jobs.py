"""SQLite statements: jobs as rows (`engine.JobSQL`).

A job is claimed by an owner (`host:pid:nonce`) that refreshes a heartbeat. Another runner may
take it over when the heartbeat is stale or the owner's process is gone (kill -9), which is
how a job resumes after a crash.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence

import apsw

from localrank.store.rows import JOB_COLUMNS, Row, now_iso

# How long an owner SQLite cannot check (on another host) keeps a job without a heartbeat.
STALE_SECONDS = 600.0


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


def insert_job(
    conn: apsw.Connection,
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
        "VALUES (?, ?, ?, 'queued', ?, ?, ?, ?)",
        (job_id, collection, kind, total, params, stamp, stamp),
    )
    conn.executemany(
        "INSERT INTO job_items (job, seq, doc_id, payload) VALUES (?, ?, ?, ?)",
        [(job_id, i, doc_id, payload) for i, (doc_id, payload) in enumerate(items)],
    )


def job_row(conn: apsw.Connection, job_id: str, *, lock: bool = False) -> Row | None:
    return conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()


def job_rows(conn: apsw.Connection, limit: int, state: str | None) -> list[Row]:
    return conn.execute(
        f"SELECT {JOB_COLUMNS} FROM jobs WHERE (?1 IS NULL OR state = ?1) "
        "ORDER BY created DESC, rowid DESC LIMIT ?2",
        (state, limit),
    ).fetchall()


def claim_job(
    conn: apsw.Connection,
    owner: str,
    lease_seconds: float,
    skip: Sequence[str],
    only: str | None,
) -> Row | None:
    now = time.time()
    open_jobs = conn.execute(
        "SELECT id, owner, heartbeat FROM jobs WHERE state IN ('queued', 'running') "
        "ORDER BY created, rowid"
    ).fetchall()
    for job_id, held_by, heartbeat in open_jobs:
        if job_id in skip or (only is not None and job_id != only):
            continue
        # A live owner on this host keeps its job however slow a batch is; the heartbeat
        # only decides for owners we cannot check (or a pid reused after a reboot).
        free = (
            held_by is None
            or held_by == owner
            or not _owner_alive(str(held_by))
            or now - float(heartbeat or 0.0) > lease_seconds
        )
        if free:
            return conn.execute(
                "UPDATE jobs SET state = 'running', owner = ?, heartbeat = ?, updated = ? "
                f"WHERE id = ? RETURNING {JOB_COLUMNS}",
                (owner, now, now_iso(), job_id),
            ).fetchone()
    return None


def renew_job(conn: apsw.Connection, job_id: str, owner: str, lease_seconds: float) -> bool:
    row = conn.execute(
        "UPDATE jobs SET heartbeat = ? WHERE id = ? AND owner = ? AND state = 'running' "
        "RETURNING id",
        (time.time(), job_id, owner),
    ).fetchone()
    return row is not None


def release_jobs(conn: apsw.Connection, owner: str, only: str | None) -> None:
    conn.execute(
        "UPDATE jobs SET state = 'queued', owner = NULL, heartbeat = NULL "
        "WHERE owner = ?1 AND state = 'running' AND (?2 IS NULL OR id = ?2)",
        (owner, only),
    )


def pending_items(conn: apsw.Connection, job_id: str, limit: int, after: int) -> list[Row]:
    return conn.execute(
        "SELECT seq, doc_id, payload FROM job_items WHERE job = ? AND state = 'pending' "
        "AND seq > ? ORDER BY seq LIMIT ?",
        (job_id, after, limit),
    ).fetchall()


def mark_items(conn: apsw.Connection, job_id: str, seqs: Sequence[int], state: str) -> list[int]:
    marked = []
    for seq in seqs:
        row = conn.execute(
            "UPDATE job_items SET state = ?, payload = NULL "
            "WHERE job = ? AND seq = ? AND state = 'pending' RETURNING seq",
            (state, job_id, int(seq)),
        ).fetchone()
        if row is not None:
            marked.append(int(row[0]))
    return marked


def advance_job(
    conn: apsw.Connection, job_id: str, done: int, failed: int, lease_seconds: float
) -> None:
    conn.execute(
        "UPDATE jobs SET done = done + ?, failed = failed + ?, heartbeat = ?, updated = ? "
        "WHERE id = ?",
        (done, failed, time.time(), now_iso(), job_id),
    )


def set_errors(conn: apsw.Connection, job_id: str, errors: str) -> None:
    conn.execute("UPDATE jobs SET errors = ? WHERE id = ?", (errors, job_id))


def close_job(conn: apsw.Connection, job_id: str, state: str) -> None:
    conn.execute(
        "UPDATE jobs SET state = ?, owner = NULL, updated = ? WHERE id = ?",
        (state, now_iso(), job_id),
    )


def requeue_failed(conn: apsw.Connection, job_id: str, errors: str) -> None:
    conn.execute(
        "UPDATE jobs SET state = 'queued', owner = NULL, heartbeat = NULL, errors = ?, "
        "updated = ? WHERE id = ?",
        (errors, now_iso(), job_id),
    )
