"""The daemon the MCP tools talk to: found (or started) in the background, so that the server
answers its client at once, and waited for within a bound agents accept."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from localrank.client import DaemonClient, DaemonUnreachable
from localrank.errors import NotReady

T = TypeVar("T")
# A tool call waits this long for a daemon that is starting or loading its model, then says so.
ANSWER_WITHIN = 8.0
log = logging.getLogger(__name__)


class DaemonAccess:
    """The daemon the tools talk to. `connect` finds the running daemon (or starts one), in the
    background from `start()` so that the server answers at once; when the daemon goes away
    mid-session, the next call connects again."""

    def __init__(
        self, connect: Callable[[], DaemonClient], *, answer_within: float = ANSWER_WITHIN
    ) -> None:
        self._connect = connect
        self._client: DaemonClient | None = None
        self._lock = threading.Lock()
        self.answer_within = answer_within

    def start(self) -> None:
        """Find or start the daemon now, in a thread (a failure is reported by the next call)."""

        def connect() -> None:
            try:
                self.client(timeout=-1)
            except Exception as exc:  # the next tool call connects again and reports it
                log.warning("cannot reach the localrank daemon yet: %s", exc)

        threading.Thread(target=connect, name="localrank-mcp-connect", daemon=True).start()

    def client(self, timeout: float | None = None) -> DaemonClient:
        """The daemon's client, connecting first if needed (waiting `timeout` seconds at most
        for a connection in progress; -1: without limit)."""
        wait = self.answer_within if timeout is None else timeout
        if not self._lock.acquire(timeout=wait):
            raise NotReady(
                "localrank is still starting its daemon (finding it, or loading the model): "
                "try again in a few seconds"
            )
        try:
            if self._client is None:
                self._client = self._connect()
            return self._client
        finally:
            self._lock.release()

    def call(self, fn: Callable[[DaemonClient], T]) -> T:
        """Run `fn` against the daemon: waits while its model loads (`answer_within` seconds at
        most, then the daemon's own "still loading" answer), reconnects once if it went away."""
        deadline = time.monotonic() + self.answer_within
        for attempt in range(2):
            client = self.client(timeout=max(0.0, deadline - time.monotonic()))
            try:
                while True:
                    try:
                        return fn(client)
                    except NotReady as exc:
                        if "loading" not in exc.message or time.monotonic() > deadline:
                            raise
                        time.sleep(0.25)
            except DaemonUnreachable:
                with self._lock:
                    if self._client is client:
                        self._client = None
                if attempt:
                    raise
        raise AssertionError("unreachable")
