"""What `localrank doctor` asks of a PostgreSQL store, without changing it: is the server
reachable, which PostgreSQL and pgvector it runs, which migrations are applied."""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg

from localrank.config import redact_url
from localrank.store.postgres.db import CONNECT_TIMEOUT_S, describe
from localrank.store.postgres.schema import MIGRATIONS, applied_migrations


@dataclass(frozen=True)
class StoreStatus:
    where: str
    error: str | None = None
    server_version: str | None = None
    pgvector: str | None = None
    pgvector_available: str | None = None  # installable on the server, not yet in the database
    applied: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)


def probe(url: str) -> StoreStatus:
    """Connect once, read versions and the migration record; never raises for a driver error."""
    where = redact_url(url)
    try:
        with psycopg.connect(url, connect_timeout=int(CONNECT_TIMEOUT_S), autocommit=True) as conn:
            row = conn.execute("SELECT current_setting('server_version')").fetchone()
            server = str(row[0]) if row else "?"
            ext = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            installed = ext.fetchone()
            avail = conn.execute(
                "SELECT default_version FROM pg_available_extensions WHERE name = 'vector'"
            ).fetchone()
            applied = applied_migrations(conn)
    except psycopg.Error as exc:
        return StoreStatus(where, error=describe(exc))
    names = [name for name, _ in MIGRATIONS]
    return StoreStatus(
        where,
        server_version=server,
        pgvector=str(installed[0]) if installed else None,
        pgvector_available=str(avail[0]) if avail else None,
        applied=[n for n in names if n in applied],
        pending=[n for n in names if n not in applied],
    )
