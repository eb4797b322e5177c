"""The threads searches run on: a fixed few, each warmed at startup by throwaway searches on
every collection, so the first search after a restart is as fast as the rest.

Measured at 1M chunks on the 2-core box: a thread's first candidate scans take 35-50 ms where
its later ones take ~16 ms (its malloc arena grows and faults in the scan's temporaries; its
SQLite connection maps the file afresh), and a warm-up on one thread does nothing for another.
asyncio's default executor hands each search to whichever of its threads is free, so the first
searches after a restart paid that: 74-210 ms against 40-57 ms for the rest (whole searches,
five fresh processes). On these threads, warmed before /health reports the collections ready:
34-73 ms against 32-64 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from localrank.collections.search import warm_up
from localrank.store import Store

log = logging.getLogger(__name__)

SEARCH_THREADS = 2  # one search never waits behind a slow one; more would only share 2 cores
WARM_TIMEOUT_S = 60.0

T = TypeVar("T")


class SearchThreads:
    """Runs the blocking part of searches, and prepares for them (`prepare`)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._pool = ThreadPoolExecutor(SEARCH_THREADS, thread_name_prefix="localrank-search")
        self._closing = False
        self._warming: asyncio.Future[Any] | None = None
        self._warmed = False

    async def run(self, fn: Callable[[], T]) -> T:
        """`fn()` on one of the search threads."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    async def prepare(self) -> None:
        """The store's `prepare_search`, then `warm_up` on each thread for each collection with
        chunks. Searches that arrive meanwhile are answered (correctly; maybe slower). Never
        raises: a failure is logged (searches work unwarmed), and one caused by shutting down
        (the store closed, the threads released, at any step of this) is expected and quiet."""
        try:
            await self._prepare()
        except Exception:
            if not self._closing:
                log.warning("preparing for search failed", exc_info=True)
        finally:
            self._warmed = True

    async def _prepare(self) -> None:
        await self.run(self.store.prepare_search)
        if self._closing:
            return
        listed = await self.run(self.store.list_collections)
        collections = [c for c, _, chunks in listed if chunks]
        barrier = threading.Barrier(SEARCH_THREADS)

        def warm() -> None:
            barrier.wait(WARM_TIMEOUT_S)  # every thread takes exactly one of these
            for collection in collections:
                if self._closing:
                    return
                warm_up(self.store, collection)

        self._warming = asyncio.gather(*(self.run(warm) for _ in range(SEARCH_THREADS)))
        await self._warming

    def readiness(self) -> dict[str, Any]:
        """The store's `search_readiness`, ready only once the threads are warm too."""
        body = self.store.search_readiness().to_api()
        body["ready"] = bool(body["ready"]) and self._warmed
        return body

    async def close(self) -> None:
        """No more warm-ups (a running one ends after its current collection); release the
        threads. A running `prepare_search` is stopped by the store's own `close()`."""
        self._closing = True
        if self._warming is not None:
            with contextlib.suppress(Exception):
                await self._warming
        self._pool.shutdown(wait=False)
