"""The PostgreSQL connection discipline: one psycopg pool per store, the pgvector adapters, and
one translation of driver errors into localrank's.

Connections are autocommit: a read is one statement, a write is an explicit
`conn.transaction()` (so nothing is left idle in a transaction). Vectors cross the wire in
pgvector's binary format (`Vec`), never as text: 200k x 1024 floats formatted as text would
cost more than the inserts. A pooled connection is checked before it is handed out, so after
the server restarts the first request gets a fresh connection instead of a dead one.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import psycopg
from psycopg.adapt import Buffer, Dumper, Loader
from psycopg.pq import Format
from psycopg.types import TypeInfo
from psycopg_pool import ConnectionPool, PoolTimeout

from localrank.config import redact_url
from localrank.errors import LocalrankError, StoreError, StoreUnavailable
from localrank.store.health import FailureLog

CONNECT_TIMEOUT_S = 5.0
POOL_MAX = 8
_HEADER = struct.Struct(">HH")


class Vec:
    """A float32 vector bound as pgvector's `vector` (binary wire format)."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray) -> None:
        self.array = np.asarray(array, dtype=np.float32).reshape(-1)


class _VecDumper(Dumper):
    format = Format.BINARY

    def dump(self, obj: Vec) -> Buffer:
        a = obj.array
        return _HEADER.pack(len(a), 0) + a.astype(">f4").tobytes()


class _VecLoader(Loader):
    format = Format.BINARY

    def load(self, data: Buffer) -> np.ndarray:
        dim, _ = _HEADER.unpack_from(data)
        return np.frombuffer(bytes(data), dtype=">f4", count=dim, offset=4).astype(np.float32)


def register_vector(conn: psycopg.Connection[Any]) -> None:
    """Teach a connection pgvector's `vector` type (binary dump of `Vec`, binary load to
    float32 arrays). A no-op where the extension is not installed yet (before migration)."""
    info = TypeInfo.fetch(conn, "vector")
    if info is None:
        return
    info.register(conn)
    oid = info.oid

    class Dump(_VecDumper):
        pass

    Dump.oid = oid
    conn.adapters.register_dumper(Vec, Dump)
    conn.adapters.register_loader(oid, _VecLoader)


def describe(exc: BaseException) -> str:
    """The first line of a driver error: what a user can act on."""
    text = str(exc).strip() or type(exc).__name__
    return re.sub(r"\s+", " ", text.splitlines()[0])


class Database:
    """A pool of autocommit connections to one PostgreSQL database."""

    def __init__(self, url: str, *, max_size: int = POOL_MAX) -> None:
        self.url = url
        self.where = redact_url(url)
        self.failures = FailureLog()
        self.pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            kwargs={"autocommit": True, "connect_timeout": int(CONNECT_TIMEOUT_S)},
            configure=self._configure,
            check=ConnectionPool.check_connection,
            timeout=CONNECT_TIMEOUT_S,
            open=False,
            name="localrank",
        )
        try:
            self.pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
        except PoolTimeout as exc:
            self.pool.close()
            raise StoreUnavailable(
                f"cannot reach PostgreSQL at {self.where}: {self._why_unreachable()}"
            ) from exc
        self.vector_ready = False

    def _why_unreachable(self) -> str:
        try:
            psycopg.connect(self.url, connect_timeout=int(CONNECT_TIMEOUT_S)).close()
        except psycopg.Error as exc:
            return describe(exc)
        return f"no connection within {CONNECT_TIMEOUT_S:.0f} s"

    @staticmethod
    def _configure(conn: psycopg.Connection[Any]) -> None:
        register_vector(conn)

    def reload_types(self) -> None:
        """After the migration created the extension: connections opened before it learn the
        vector type (the pool's next connections do so in `_configure`)."""
        self.pool.drain()

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection; driver errors come out as StoreUnavailable (the server is
        unreachable: 503, retry) or StoreError."""
        try:
            with self.pool.connection() as conn:
                yield conn
        except LocalrankError:
            raise
        except (psycopg.OperationalError, PoolTimeout) as exc:
            error = StoreUnavailable(f"PostgreSQL at {self.where}: {describe(exc)}")
            self.failures.record(error.message)
            raise error from exc
        except psycopg.Error as exc:
            raise StoreError(f"PostgreSQL: {describe(exc)}") from exc

    def ping(self, timeout: float) -> None:
        """Connect afresh (not through the pool, which may be busy or still holding dead
        connections) and run one query; StoreUnavailable with the reason when that fails."""
        try:
            # libpq rounds connect_timeout to whole seconds, and below 2 up to 2.
            with psycopg.connect(
                self.url, connect_timeout=max(2, math.ceil(timeout)), autocommit=True
            ) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as exc:
            raise StoreUnavailable(f"PostgreSQL at {self.where}: {describe(exc)}") from exc

    @contextmanager
    def read(self) -> Iterator[psycopg.Connection[Any]]:
        """Several statements in one transaction."""
        with self.connection() as conn, conn.transaction():
            yield conn

    @contextmanager
    def write(self) -> Iterator[psycopg.Connection[Any]]:
        """One transaction: committed at the end of the block, rolled back on any exception."""
        with self.connection() as conn, conn.transaction():
            yield conn

    def close(self) -> None:
        self.pool.close()


def one(conn: psycopg.Connection[Any], query: Any, params: Any = None) -> Any:
    """The first column of the first row (COUNT, RETURNING); StoreError if no row."""
    row = conn.execute(query, params).fetchone()
    if row is None:
        raise StoreError("a query that must return a row returned none")
    return row[0]
