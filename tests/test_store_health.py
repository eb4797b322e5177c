"""How the daemon knows its store is not working (what `/health` reports as `store`): the
failures a store records as its operations run, the ping, and the monitor that combines them
within a fraction of a second whatever the database does. On a real SQLite file: its write lock
held by another connection, the file removed under the daemon. (PostgreSQL stopped and started
again: test_shared_store.py.)"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import apsw
import pytest
from fake_embedder import HashEmbedder

from localrank.collections import CollectionService
from localrank.collections.documents import DocumentIn
from localrank.collections.store_monitor import PING_TIMEOUT_S, PING_WAIT_S, StoreMonitor
from localrank.errors import StoreUnavailable, http_status
from localrank.store import SQLiteStore
from localrank.store.health import FailureLog


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def hold_write_lock(path: Path) -> apsw.Connection:
    """Another writer in a transaction (a backup tool, a `sqlite3` shell after BEGIN): it holds
    the database's write lock until it ends the transaction."""
    conn = apsw.Connection(str(path))
    conn.execute("BEGIN IMMEDIATE")
    return conn


def test_the_failure_log_counts_a_window_and_keeps_the_last_reason() -> None:
    clock = Clock()
    log = FailureLog(clock)
    assert log.recent(10).count == 0
    log.record("first")
    clock.now += 4
    log.record("second")
    clock.now += 2
    recent = log.recent(10)
    assert (recent.count, recent.reason, recent.age_s) == (2, "second", 2)
    clock.now += 5  # the first is 11 s old, the second 7 s
    assert log.recent(10).count == 1
    clock.now += 4
    assert log.recent(10).count == 0


class HangingPing(SQLiteStore):
    """A store whose database does not answer a ping until `answer` is set (a server that
    hangs): what the monitor must never wait for."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.answer = threading.Event()
        self.pings = 0

    def ping(self, timeout: float) -> None:
        self.pings += 1
        self.answer.wait(30)


async def test_a_ping_that_hangs_never_makes_the_status_wait(tmp_path: Path) -> None:
    store = HangingPing(tmp_path / "db.sqlite")
    clock = Clock()
    monitor = StoreMonitor(store, clock=clock)
    try:
        started = time.perf_counter()
        assert await monitor.status() == {"status": "ok"}  # nothing known yet
        clock.now += PING_TIMEOUT_S + 1
        status = await monitor.status()
        assert time.perf_counter() - started < 2 * PING_WAIT_S + 0.5
        assert status["status"] == "unavailable"
        assert "has not answered a ping for 3 s" in status["reason"]
        assert store.pings == 1  # one ping at a time: a hung one is not joined by more
        store.answer.set()  # it answers at last
        while (status := await monitor.status())["status"] != "ok":
            await asyncio.sleep(0.01)
        clock.now += 10
        assert await monitor.status() == {"status": "ok"} and store.pings == 2
    finally:
        store.answer.set()
        monitor.close()
        store.close()


async def test_a_locked_sqlite_file_is_unavailable_while_its_writes_fail(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    store = SQLiteStore(path, busy_timeout_ms=50)
    emb = HashEmbedder()
    svc = CollectionService(store, lambda: emb)
    monitor = StoreMonitor(store, window_s=0.5)  # /health's, with a short memory
    try:
        await svc.create_collection("c")
        assert await monitor.status() == {"status": "ok"}
        holder = hold_write_lock(path)
        with pytest.raises(StoreUnavailable) as err:
            await svc.add_documents("c", [DocumentIn("a", "text")], background=False)
        assert http_status(err.value) == 503 and "locked by another writer" in err.value.message
        status = await monitor.status()
        assert status["status"] == "unavailable"
        assert "1 store operation(s) failed" in status["reason"]
        assert "locked by another writer" in status["reason"]
        assert [c["name"] for c in await svc.list_collections()] == ["c"]  # reads work (WAL)
        holder.execute("COMMIT")
        holder.close()
        await svc.add_documents("c", [DocumentIn("a", "text")], background=False)
        await asyncio.sleep(0.6)  # past the window: the failure is history
        assert await monitor.status() == {"status": "ok"}
    finally:
        monitor.close()
        await svc.close()
        store.close()


async def test_a_removed_sqlite_file_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    store = SQLiteStore(path)
    clock = Clock()
    monitor = StoreMonitor(store, clock=clock)
    try:
        assert await monitor.status() == {"status": "ok"}
        path.unlink()
        # Writes still "succeed", into a file no one will open again: only the ping sees it.
        store.create_collection("c", fingerprint="fp", model_id="m", dim=8, settings={})
        assert await monitor.status() == {"status": "ok"}  # the last ping's answer, still fresh
        clock.now += 5
        status = await monitor.status()
        assert status["status"] == "unavailable" and "is gone" in status["reason"]
        assert str(path) in status["reason"]
    finally:
        monitor.close()
        store.close()
