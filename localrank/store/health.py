"""What a store's own operations say about its database, for `/health`: the failures that meant
the database could not be reached or would not take a write (StoreUnavailable), when and why.

Each store records into its `FailureLog` where it translates driver errors (PostgreSQL: every
pooled connection; SQLite: every write transaction). Reading it does no I/O, so `/health` can
report a database whose operations keep failing (a server whose backend crashes on every vector
query still answers a ping) without asking the database anything.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

# Failures older than this no longer make the store "unavailable" in /health.
FAILURE_WINDOW_S = 10.0
_KEPT = 1024  # timestamps kept: enough to count a window's worth under any request rate


@dataclass(frozen=True)
class RecentFailures:
    """The failures of a recent window: how many, the last one's reason and age (seconds)."""

    count: int
    reason: str | None = None
    age_s: float | None = None


class FailureLog:
    """StoreUnavailable failures as they happen (thread-safe: stores run in worker threads)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._times: deque[float] = deque(maxlen=_KEPT)
        self._reason: str | None = None

    def record(self, reason: str) -> None:
        with self._lock:
            self._times.append(self._clock())
            self._reason = reason

    def recent(self, window_s: float = FAILURE_WINDOW_S) -> RecentFailures:
        """The failures of the last `window_s` seconds."""
        now = self._clock()
        with self._lock:
            count = sum(1 for t in self._times if now - t <= window_s)
            if not count:
                return RecentFailures(0)
            return RecentFailures(count, self._reason, now - self._times[-1])
