"""Persistent collections behind a narrow protocol. Knows nothing of HTTP or models.

`protocol.Store` is the contract (collections bound to fingerprints, documents and chunks with
citations, durable jobs, keyword and vector candidates, the embedding cache; see its docstring for
the guarantees); `records` and `filters` are the values that cross it. Two implementations:
`sqlite.SQLiteStore`, one SQLite file with sqlite-vec (the default, a laptop's), and
`postgres.PostgresStore`, PostgreSQL + pgvector (one index shared by several daemons), chosen by
the `store_url` setting. Both are `sql_store.SQLStore` over their engine's statements (`engine`
says what an engine supplies; `steps`, `plans` and `migrations` are shared, `rows` the tables'
common columns): each engine package keeps its SQL and what it searches its own way. The
application layer (`localrank.collections`) talks to the protocol only.
"""

from __future__ import annotations

from pathlib import Path

from localrank.errors import ConfigError
from localrank.store.protocol import Store
from localrank.store.sqlite import SQLiteStore

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
SQLITE_SCHEME = "sqlite:///"


def is_postgres_url(location: Path | str) -> bool:
    return isinstance(location, str) and location.startswith(POSTGRES_SCHEMES)


def sqlite_path(location: Path | str) -> Path:
    """The file of an SQLite location: a path, or `sqlite:///absolute/path`."""
    if isinstance(location, str) and location.startswith(SQLITE_SCHEME):
        return Path("/" + location.removeprefix(SQLITE_SCHEME).lstrip("/"))
    if isinstance(location, str) and "://" in location:
        raise ConfigError(
            f"unsupported store URL {location.split('://')[0]}://...: use "
            "postgresql://user@host/db, sqlite:///path/to/file.db or a file path",
            param="store_url",
        )
    return Path(location)


def open_store(location: Path | str, *, lease_seconds: float | None = None) -> Store:
    """The store at `location`: `postgresql://...` (PostgreSQL + pgvector), `sqlite:///...` or
    a file path (SQLite). `lease_seconds`: how long a PostgreSQL job claim lasts unrenewed."""
    if is_postgres_url(location):
        # psycopg is imported only when a PostgreSQL store is configured.
        from localrank.store.postgres import PostgresStore

        if lease_seconds is None:
            return PostgresStore(str(location))
        return PostgresStore(str(location), lease_seconds=lease_seconds)
    return SQLiteStore(sqlite_path(location))


__all__ = ["SQLiteStore", "Store", "is_postgres_url", "open_store", "sqlite_path"]
