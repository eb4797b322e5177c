"""Whether the store works, for `/health`, answered at once whatever the database is doing.

Two sources. The failures the store recorded as its operations ran (`Store.failures`): a
database whose operations keep failing although it answers a ping (a backend that crashes on
every vector query) is seen there. And a ping (`Store.ping`): a database nobody used lately may
be gone. The ping runs in a thread of its own, one at a time and at most every PING_EVERY_S;
`status` waits for it at most PING_WAIT_S and otherwise reports what the last one said, so a
database that hangs never makes `/health` slow. A ping still unanswered after PING_TIMEOUT_S
is itself the answer: the database does not answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from localrank.errors import LocalrankError
from localrank.store import Store
from localrank.store.health import FAILURE_WINDOW_S

PING_TIMEOUT_S = 2.0
PING_EVERY_S = 2.0
PING_WAIT_S = 0.25


class StoreMonitor:
    """The store's status as `/health` reports it: {"status": "ok"} or
    {"status": "unavailable", "reason": ...}."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Callable[[], float] = time.monotonic,
        window_s: float = FAILURE_WINDOW_S,
    ) -> None:
        self.store = store
        self.clock = clock
        self.window_s = window_s
        self._ping: asyncio.Future[str | None] | None = None
        self._ping_started = 0.0
        self._answer: str | None = None  # the last ping's failure; None: it succeeded
        self._answered: float | None = None  # when the last ping finished

    def _start_ping(self) -> asyncio.Future[str | None]:
        """Ping in a daemon thread (one that hangs must not hold up the process's exit); the
        future gets the failure, or None."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str | None] = loop.create_future()

        def answer(reason: str | None) -> None:
            if not future.done():
                future.set_result(reason)

        def run() -> None:
            try:
                self.store.ping(PING_TIMEOUT_S)
                reason = None
            except LocalrankError as exc:
                reason = exc.message
            except Exception as exc:  # a driver error a store did not translate: an answer too
                reason = f"{type(exc).__name__}: {exc}"
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(answer, reason)

        threading.Thread(target=run, name="localrank-store-ping", daemon=True).start()
        return future

    async def status(self) -> dict[str, Any]:
        """Ping when the last answer is older than PING_EVERY_S, wait for it a moment, then say
        what is known. Never waits longer than PING_WAIT_S."""
        now = self.clock()
        if self._ping is None and (self._answered is None or now - self._answered >= PING_EVERY_S):
            self._ping = self._start_ping()
            self._ping_started = now
        ping = self._ping
        if ping is not None:
            await asyncio.wait({ping}, timeout=PING_WAIT_S)  # never cancels the ping
            if ping.done() and ping is self._ping:
                self._answer, self._answered, self._ping = ping.result(), self.clock(), None
        reason = self._answer
        waited = self.clock() - self._ping_started
        if self._ping is not None and waited > PING_TIMEOUT_S:
            reason = f"the database has not answered a ping for {waited:.0f} s"
        if reason is None:
            recent = self.store.failures.recent(self.window_s)
            if recent.count:
                reason = (
                    f"{recent.count} store operation(s) failed in the last {self.window_s:g} s, "
                    f"the last {recent.age_s or 0:.0f} s ago: {recent.reason}"
                )
        if reason is None:
            return {"status": "ok"}
        return {"status": "unavailable", "reason": reason}

    def close(self) -> None:
        """Forget a ping still running (it finishes on its own, unheard)."""
        if self._ping is not None:
            self._ping.cancel()
            self._ping = None
