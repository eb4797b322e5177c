"""The SQLite connection discipline: every PRAGMA in `connect()`, one writer, many readers.

Why apsw: the stdlib `sqlite3` of many Pythons (this machine's, several macOS builds) cannot load
extensions, and the store loads sqlite-vec. apsw also ships a current SQLite with FTS5.

Durability: WAL with `synchronous=FULL`. WAL+NORMAL already survives `kill -9` of the process
(the WAL is in the OS page cache once COMMIT returns); FULL adds an fsync per commit so an
acknowledged document also survives power loss. Ingestion commits per batch, so the fsync is
cheap next to embedding.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import apsw
import sqlite_vec

from localrank.errors import StoreError, StoreUnavailable
from localrank.store.health import FailureLog

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 10_000
CLOSE_WAIT_SECONDS = 5.0  # at close, how long a connection busy in another thread is waited for
MMAP_BYTES = 64 << 30  # address space, not memory: pages are the OS's file cache
# What the file, not the statement, refuses: a write that may succeed later, when the lock is
# released, space is freed, the disk answers again.
UNAVAILABLE = (
    apsw.BusyError,
    apsw.LockedError,
    apsw.IOError,
    apsw.FullError,
    apsw.ReadOnlyError,
    apsw.CantOpenError,
)


def connect(
    path: Path | str, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS, create: bool = True
) -> apsw.Connection:
    """Open one connection with sqlite-vec loaded and every PRAGMA localrank relies on.
    `create`: make the file when it does not exist."""
    flags = apsw.SQLITE_OPEN_READWRITE | (apsw.SQLITE_OPEN_CREATE if create else 0)
    try:
        conn = apsw.Connection(str(path), flags=flags)
        conn.enable_load_extension(True)
        conn.load_extension(sqlite_vec.loadable_path())
        conn.enable_load_extension(False)
        conn.set_busy_timeout(busy_timeout_ms)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        # Chunk texts and vectors are read in bursts by search: a bigger page cache (64 MiB)
        # and memory-mapped reads keep the rescoring fetch off the read() syscall path. The
        # map covers the whole file (up to MMAP_BYTES), not only its first 256 MiB: at 1M
        # chunks (4.9 GB) a search's keyword and vector stages then took ~0.7x the time
        # (interleaved runs on a busy 2-core machine).
        conn.execute("PRAGMA cache_size=-65536")
        conn.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
        conn.execute("PRAGMA temp_store=MEMORY")
    except apsw.Error as exc:
        raise StoreError(f"cannot open database {path}: {exc}") from exc
    return conn


def engine_versions() -> tuple[str, str]:
    """(sqlite-vec, SQLite) versions as loaded through `connect`: raises StoreError when the
    extension does not load (what `localrank doctor` checks)."""
    conn = connect(":memory:")
    try:
        (vec,) = next(conn.execute("SELECT vec_version()"))
    finally:
        conn.close()
    return str(vec), apsw.sqlite_lib_version()


class Database:
    """One SQLite file. Writes go through `write()` (a process-wide lock + BEGIN IMMEDIATE);
    reads use a per-thread connection, so readers never wait for the writer (WAL).

    A write the file will not take (locked by another process past the busy timeout, a full
    disk, an I/O error, a read-only file) raises StoreUnavailable and is recorded in `failures`.
    `busy_timeout_ms`: how long a statement waits for another process's lock."""

    def __init__(self, path: Path | str, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.busy_timeout_ms = busy_timeout_ms
        self.failures = FailureLog()
        self._lock = threading.RLock()
        self._local = threading.local()
        self._all: list[apsw.Connection] = []
        self._all_lock = threading.Lock()
        self._closed = False
        self._writer = connect(self.path, busy_timeout_ms=busy_timeout_ms)
        self._all.append(self._writer)
        # The file this process has open: if it is removed or replaced, writes go on into a
        # file nobody will open again (what `ping` checks).
        self._identity = _identity(self.path)

    @property
    def closed(self) -> bool:
        return self._closed

    def reader(self) -> apsw.Connection:
        """This thread's read connection (created on first use)."""
        if self._closed:
            raise StoreError("the store is closed")
        conn: apsw.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # Never a new empty file: had the database been removed, a reader that made one
            # would answer "no such table" where the truth is "the database is gone".
            conn = connect(self.path, busy_timeout_ms=self.busy_timeout_ms, create=False)
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def connection(self) -> Iterator[apsw.Connection]:
        """This thread's read connection, for reads of one statement each."""
        yield self.reader()

    @contextmanager
    def read(self) -> Iterator[apsw.Connection]:
        """A consistent snapshot for several statements (a deferred read transaction)."""
        conn = self.reader()
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    @contextmanager
    def write(self) -> Iterator[apsw.Connection]:
        """The single writer: BEGIN IMMEDIATE ... COMMIT, rolled back on any exception.

        IMMEDIATE takes the write lock up front so a transaction never fails half way with
        SQLITE_BUSY when another process (a CLI indexer next to the daemon) is writing.
        """
        if self._closed:
            raise StoreError("the store is closed")
        with self._lock:
            conn = self._writer
            try:
                for attempt in range(3):
                    try:
                        conn.execute("BEGIN IMMEDIATE")
                        break
                    except apsw.BusyError:
                        if attempt == 2:
                            raise
                        time.sleep(0.5)
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:  # a failed COMMIT may have rolled back already
                        conn.execute("ROLLBACK")
                    raise
            except UNAVAILABLE as exc:
                error = StoreUnavailable(f"SQLite database {self.path}: {_why(exc)}")
                self.failures.record(error.message)
                raise error from exc

    def ping(self, timeout: float = 0.0) -> None:
        """StoreUnavailable when the database file this process writes to is no longer the one
        at its path (removed or replaced): what is written from then on is lost at the next
        start. (A write the file refuses is seen by the write itself: `failures`.) A stat of the
        file: never slow, whatever `timeout`."""
        try:
            identity = _identity(self.path)
        except OSError as exc:
            raise StoreUnavailable(
                f"SQLite database {self.path} is gone ({exc.strerror}): what this daemon "
                "writes now is lost when it restarts"
            ) from exc
        if identity != self._identity:
            raise StoreUnavailable(
                f"SQLite database {self.path} was replaced by another file: this daemon still "
                "writes to the one it opened; restart it"
            )

    def execute_autocommit(self, sql: str, bindings: tuple[Any, ...] = ()) -> None:
        """Statements that cannot run inside a transaction (VACUUM), under the writer lock."""
        with self._lock:
            self._writer.execute(sql, bindings)

    def close(self) -> None:
        """Close every connection this Database opened (all threads)."""
        with self._lock, self._all_lock:
            if self._closed:
                return
            self._closed = True
            for conn in self._all:
                _close_when_free(conn)
            self._all.clear()


def _close_when_free(conn: apsw.Connection) -> None:
    """Close `conn`, waiting for a statement another thread is running on it to finish: at
    shutdown a cancelled task's worker thread (the job runner's, the watcher's) may still be
    inside one, and apsw refuses to close a connection in use. No new statement can start: the
    Database is marked closed first."""
    deadline = time.monotonic() + CLOSE_WAIT_SECONDS
    while True:
        try:
            conn.close()
            return
        except apsw.ThreadingViolationError:
            if time.monotonic() > deadline:
                log.warning("a database connection was still busy after %.0f s", CLOSE_WAIT_SECONDS)
                return
            time.sleep(0.01)


def _identity(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _why(exc: apsw.Error) -> str:
    if isinstance(exc, (apsw.BusyError, apsw.LockedError)):
        return f"locked by another writer ({exc})"
    return str(exc)


def scalar(conn: apsw.Connection, sql: str, bindings: tuple[Any, ...] = ()) -> Any:
    """The first column of the first row (for COUNT and RETURNING); StoreError if no row."""
    row = conn.execute(sql, bindings).fetchone()
    if row is None:
        raise StoreError("a query that must return a row returned none")
    return row[0]
