"""Running the daemon: listen, load, notify the supervisor, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import threading
from pathlib import Path

from aiohttp import web

from localrank.client import Endpoint
from localrank.config import Settings
from localrank.errors import exit_code
from localrank.ops.sd_notify import notify_ready, notify_stopping
from localrank.serve.app import EngineLoader, make_app
from localrank.serve.connections import ACCEPT_BACKLOG, make_runner
from localrank.serve.security import check_bind_safety, start_unix_site
from localrank.serve.state import STATE_KEY

log = logging.getLogger(__name__)

# In-flight requests get this long to finish after SIGTERM; the rest of the 10 s budget is for
# the model worker's queue and the ingest runner's current batch.
DRAIN_SECONDS = 6.0


async def serve(settings: Settings, *, loader: EngineLoader | None = None) -> int:
    """Serve until SIGTERM/SIGINT. Returns the process exit code."""
    check_bind_safety(settings)
    app = make_app(settings, loader=loader) if loader else make_app(settings)
    runner = make_runner(app, settings, shutdown_timeout=DRAIN_SECONDS)
    await runner.setup()
    sites: list[web.BaseSite] = []
    if settings.unix_socket:
        sites.append(await start_unix_site(runner, settings.unix_socket))
    else:
        site = web.TCPSite(runner, settings.host, settings.port, backlog=ACCEPT_BACKLOG)
        await site.start()
        sites.append(site)
    where = settings.unix_socket or f"http://{settings.host}:{settings.port}"
    log.info("listening on %s; loading the model", where)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    state = app[STATE_KEY]
    code = 0
    ready = asyncio.create_task(state.ready.wait())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({ready, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if state.ready.is_set() and state.load_error is not None:
        log.error("not serving: %s", state.load_error.message)
        code = exit_code(state.load_error)
    elif state.ready.is_set():
        info = state.ready_models().info
        if info.fallback_reason:
            log.warning("FALLBACK MODEL IN USE: %s", info.fallback_reason)
        log.info(
            "ready in %.2fs: %s on %s/%s, dtype %s (%s)",
            state.load_seconds or 0.0,
            info.model_id,
            info.backend.backend,
            info.backend.device,
            info.backend.dtype,
            info.backend.dtype_reason or "the backend's default",
        )
        notify_ready(f"serving {info.model_id} on {where}")
        await stopped
    ready.cancel()
    stopped.cancel()

    log.info("shutting down: draining in-flight requests")
    notify_stopping()
    # Stops listening, waits for in-flight handlers, then runs the cleanup contexts
    # (model worker finishes its queue; ingest runner checkpoints).
    await runner.cleanup()
    if settings.unix_socket:
        Path(settings.unix_socket).unlink(missing_ok=True)
    log.info("stopped")
    return code


class BackgroundDaemon:
    """The daemon on its own event loop in a thread of this process: what `localrank mcp`
    starts when no daemon answers. It listens where the configuration says (so other clients
    find it too) or, when that address is taken, on a free loopback port."""

    def __init__(self, settings: Settings, *, loader: EngineLoader | None = None) -> None:
        self.settings = settings
        self.loader = loader
        self.endpoint: Endpoint | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    def start(self, timeout: float = 60.0) -> BackgroundDaemon:
        """Start listening (the model keeps loading in the background); returns self."""
        check_bind_safety(self.settings)
        self._thread = threading.Thread(target=self._main, name="localrank-daemon", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise RuntimeError("the in-process daemon did not start listening")
        if self._error is not None:
            raise self._error
        return self

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._listen())
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._started.set()
            return
        self._started.set()
        loop.run_forever()
        loop.close()

    async def _listen(self) -> None:
        s = self.settings
        app = make_app(s, loader=self.loader) if self.loader else make_app(s)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=DRAIN_SECONDS)
        await self._runner.setup()
        if s.unix_socket:
            await start_unix_site(self._runner, s.unix_socket)
            self.endpoint = Endpoint(unix_socket=s.unix_socket)
            return
        host = "127.0.0.1" if not s.binds_loopback else s.host
        for port in (s.port, 0):
            site = web.TCPSite(self._runner, host, port, backlog=ACCEPT_BACKLOG)
            try:
                await site.start()
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or port == 0:
                    raise
                continue
            bound = self._runner.addresses[-1][1]  # the port the OS chose, for port 0
            self.endpoint = Endpoint(host, int(bound))
            log.info("in-process daemon listening on %s", self.endpoint.url)
            return

    def stop(self) -> None:
        """Drain and stop (runs the app's cleanup: model worker, job runner, watcher)."""
        loop, runner = self._loop, self._runner
        if loop is None or not loop.is_running():
            return
        if runner is not None:
            future = asyncio.run_coroutine_threadsafe(runner.cleanup(), loop)
            try:
                future.result(timeout=DRAIN_SECONDS + 5)
            except Exception:  # stopping anyway
                log.exception("in-process daemon did not stop cleanly")
        if self.settings.unix_socket:
            Path(self.settings.unix_socket).unlink(missing_ok=True)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=5)
