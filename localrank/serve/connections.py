"""Connections that cannot hold the daemon: limits on how many, how idle and how slow.

aiohttp closes a connection that has not sent a complete request within its keep-alive
timeout, from the moment it connects (so idle, stalled and slow-drip header connections all go
after `idle_timeout_s`); request bodies are read against `body_timeout_s` by the security
middleware. What aiohttp does not do, done here:

- a cap on open connections below the process's file limit: past it, the oldest connection with
  no request in progress is closed to make room, so a local process holding a thousand idle
  sockets cannot lock everyone else out (nor make accept() fail with EMFILE);
- errors from aiohttp's own HTTP parser (request line or header too long, duplicate Host) come
  back as JSON in localrank's error shape instead of text/plain, with the limit in bytes.

Both hook aiohttp's server and protocol classes (`Server.__call__`, `RequestHandler
.handle_error`), whose signatures aiohttp keeps stable; `DaemonAppRunner` is the AppRunner that
uses them.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler

from localrank import __version__
from localrank.config import Settings
from localrank.serve.api import localrank_error_body

log = logging.getLogger(__name__)

# How many connections the listener may accept in one go: asyncio accepts up to this many in one
# callback, before any of them reaches the cap check, so they need room under the file limit.
ACCEPT_BACKLOG = 128
# File descriptors kept free under the limit: one accept batch, plus the store, model files and
# logs. Without the batch's room, 1,100 idle clients against a 1,024-file limit made accept()
# fail with EMFILE, and asyncio then stops accepting for a whole second.
RESERVED_FDS = 64 + ACCEPT_BACKLOG
LINGER_SECONDS = 2.0


def raise_file_limit() -> int:
    """Raise the soft open-file limit to the hard one; returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:  # not allowed here: keep the soft limit
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
    return int(soft) if soft != resource.RLIM_INFINITY else 1 << 20


def connection_cap(configured: int, file_limit: int) -> int:
    """Open connections allowed: the configured cap (0: automatic), always below the limit."""
    ceiling = max(16, file_limit - RESERVED_FDS)
    return min(configured, ceiling) if configured > 0 else ceiling


class GuardedHandler(RequestHandler):
    """aiohttp's protocol handler, with parser errors rendered as localrank JSON."""

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError) or status >= 500:
            return super().handle_error(request, status, exc, message)
        log.debug("bad HTTP from %s: %s", request.remote, exc)
        if isinstance(exc, LineTooLong):
            text = f"the request line or a header is over the {exc.args[1]}-byte limit"
        else:
            text = f"malformed HTTP request: {exc.message}"
        response = web.json_response(
            localrank_error_body(status, text, "bad_request", None),
            status=status,
            headers={"Server": f"localrank/{__version__}"},
        )
        response.force_close()
        return response


class GuardedServer(web.Server):
    """aiohttp's low-level server with GuardedHandler and a cap on open connections."""

    def __init__(self, *args: Any, max_connections: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_connections = max_connections
        self.evicted = 0

    def __call__(self) -> RequestHandler:
        return GuardedHandler(self, loop=self._loop, **self._kwargs)

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        excess = len(self.connections) - self.max_connections
        if excess <= 0:
            return
        # Oldest first (insertion order); never one that is serving a request.
        idle = [
            h
            for h in self.connections
            if h is not handler and not getattr(h, "_request_in_progress", False)
        ]
        for victim in idle[:excess]:
            victim.force_close()
            self.evicted += 1
        log.warning(
            "%d connections open, over the cap of %d: closed the oldest idle ones (%d so far)",
            len(self.connections),
            self.max_connections,
            self.evicted,
        )


class DaemonAppRunner(web.AppRunner):
    """An AppRunner whose server is a GuardedServer."""

    def __init__(self, app: web.Application, *, max_connections: int, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._max_connections = max_connections

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        return GuardedServer(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=asyncio.get_running_loop(),
            max_connections=self._max_connections,
            **plain._kwargs,
        )


def make_runner(
    app: web.Application, settings: Settings, *, shutdown_timeout: float
) -> DaemonAppRunner:
    """The daemon's runner: guarded connections, idle timeout, handler cancellation."""
    return DaemonAppRunner(
        app,
        max_connections=connection_cap(settings.max_connections, raise_file_limit()),
        access_log=None,
        shutdown_timeout=shutdown_timeout,
        keepalive_timeout=settings.idle_timeout_s,
        # After an early answer (a 408, a 413) aiohttp reads what is left of the body so the
        # client sees the answer rather than a reset; briefly, or a stalled body would keep
        # the connection for aiohttp's default 10 s.
        lingering_time=LINGER_SECONDS,
        # A client that goes away cancels its handler, and with it its queued model work.
        handler_cancellation=True,
    )
