"""The in-memory binary index of each collection (`vector_index`), read from SQLite and kept
current against it: loaded whole on first use or by `preload`, caught up incrementally after
writes (this process's or another's), reloaded when the collection's epoch changes.

Each collection has its own lock, so a search on a collection that is ready never waits for
another one being loaded, and a search that arrives while its collection loads waits for that
load instead of starting a second one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import apsw
import numpy as np

from localrank.store.records import SearchReadiness
from localrank.store.sqlite.db import Database, scalar
from localrank.store.sqlite.vector_index import BinaryIndex, ColumnBuffers, grown, words_per_row

log = logging.getLogger(__name__)

# Rows read per statement while loading: small enough that a stop request (the store closing)
# is honoured within a fraction of a second, large enough that paging costs nothing.
LOAD_PAGE_ROWS = 65_536
STOP_WAIT_SECONDS = 30.0

_ROWS_SQL = """
    SELECT chunk, doc, code FROM codes WHERE collection_id = ? AND chunk > ? ORDER BY chunk LIMIT ?
"""


class Stopped(Exception):
    """The registry was asked to stop while loading (the store is closing)."""


def _rows_to_arrays(rows: list[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    docs = np.fromiter((r[1] for r in rows), dtype=np.int64, count=len(rows))
    width = len(rows[0][2])
    codes = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.uint8).reshape(-1, width)
    return ids, docs, codes


class IndexRegistry:
    """The binary index of each collection, refreshed against the database on every use."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._indexes: dict[int, BinaryIndex] = {}
        self._locks: dict[int, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._preload_guard = threading.Lock()  # a preload starts only if not stopped
        self._progress = SearchReadiness(ready=False, loaded=0, total=0)

    def _lock(self, collection_id: int) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(collection_id, threading.Lock())

    def get(self, collection_id: int) -> BinaryIndex | None:
        """The current snapshot for a collection, or None if the collection is gone."""
        with self._lock(collection_id), self.db.read() as conn:
            row = conn.execute(
                "SELECT generation, epoch, dim FROM collections WHERE id = ?", (collection_id,)
            ).fetchone()
            if row is None:
                self._indexes.pop(collection_id, None)
                return None
            generation, epoch, dim = int(row[0]), int(row[1]), int(row[2])
            idx = self._indexes.get(collection_id)
            if idx is not None and idx.generation == generation and idx.epoch == epoch:
                return idx
            if idx is None or idx.epoch != epoch:
                idx = self._load(conn, collection_id, generation, epoch, dim)
            else:
                idx = self._catch_up(conn, idx, generation)
            self._indexes[collection_id] = idx
            return idx

    def drop(self, collection_id: int) -> None:
        """Forget a collection's snapshot (it is reloaded on next use)."""
        with self._lock(collection_id):
            self._indexes.pop(collection_id, None)

    def _load(
        self, conn: apsw.Connection, collection_id: int, generation: int, epoch: int, dim: int
    ) -> BinaryIndex:
        """Every row of the collection, page by page, straight into column buffers."""
        count = scalar(
            conn, "SELECT count(*) FROM chunks WHERE collection_id = ?", (collection_id,)
        )
        buffers = ColumnBuffers(words_per_row(dim), grown(int(count)))
        idx = BinaryIndex(collection_id, generation, epoch, buffers, 0, np.ones(0, dtype=bool))
        for ids, docs, codes in self._pages(conn, collection_id, 0):
            idx = idx.with_rows(ids, docs, codes)
        return idx

    def _catch_up(self, conn: apsw.Connection, idx: BinaryIndex, generation: int) -> BinaryIndex:
        """Deletions since the snapshot's generation, then the rows added since."""
        dead = np.fromiter(
            (
                r[0]
                for r in conn.execute(
                    "SELECT chunk FROM tombstones WHERE collection_id = ? AND generation > ?",
                    (idx.collection_id, idx.generation),
                )
            ),
            dtype=np.int64,
        )
        idx = idx.with_deleted(np.sort(dead))
        last = int(idx.ids[-1]) if idx.n else 0
        for ids, docs, codes in self._pages(conn, idx.collection_id, last):
            idx = idx.with_rows(ids, docs, codes)
        return idx.at_generation(generation)

    def _pages(
        self, conn: apsw.Connection, collection_id: int, after: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(ids, docs, codes) of the collection's rows with id > `after`, in id order."""
        while True:
            if self._stop.is_set():
                raise Stopped("the store is closing")
            rows: list[Any] = conn.execute(
                _ROWS_SQL, (collection_id, after, LOAD_PAGE_ROWS)
            ).fetchall()
            if not rows:
                return
            yield _rows_to_arrays(rows)
            if len(rows) < LOAD_PAGE_ROWS:
                return
            after = int(rows[-1][0])

    # --- preloading ---------------------------------------------------------------------

    def preload(self) -> None:
        """Load every collection's index now, reporting progress through `readiness`."""
        with self._preload_guard:
            if self._stop.is_set():
                return
            self._idle.clear()
        started = time.monotonic()
        try:
            ids = [
                int(r[0])
                for r in self.db.reader().execute("SELECT id FROM collections ORDER BY id")
            ]
            self._progress = SearchReadiness(ready=False, loaded=0, total=len(ids))
            for i, collection_id in enumerate(ids, start=1):
                self.get(collection_id)
                self._progress = SearchReadiness(ready=False, loaded=i, total=len(ids))
            self._progress = SearchReadiness(ready=True, loaded=len(ids), total=len(ids))
            log.info(
                "search indexes of %d collection(s) loaded in %.2f s",
                len(ids),
                time.monotonic() - started,
            )
        except Stopped:
            pass
        except Exception as exc:  # searches still load lazily: report, never crash the daemon
            log.exception("preloading the search indexes failed")
            self._progress = SearchReadiness(
                ready=False,
                loaded=self._progress.loaded,
                total=self._progress.total,
                error=f"{type(exc).__name__}: {exc}",
            )
        finally:
            self._idle.set()

    def readiness(self) -> SearchReadiness:
        """How far `preload` got."""
        return self._progress

    def stop(self) -> None:
        """Stop a running preload and wait for it to let go of its connection."""
        with self._preload_guard:
            self._stop.set()
        if not self._idle.wait(STOP_WAIT_SECONDS):
            log.warning("the search-index preload did not stop within %.0f s", STOP_WAIT_SECONDS)
