"""Running the daemon: listen, load, notify the supervisor, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

from aiohttp import web

from localrank.config import Settings
from localrank.errors import exit_code
from localrank.ops.sd_notify import notify_ready, notify_stopping
from localrank.serve.app import EngineLoader, make_app
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
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=DRAIN_SECONDS)
    await runner.setup()
    sites: list[web.BaseSite] = []
    if settings.unix_socket:
        sites.append(await start_unix_site(runner, settings.unix_socket))
    else:
        site = web.TCPSite(runner, settings.host, settings.port)
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
        info = state.embedding().info
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
