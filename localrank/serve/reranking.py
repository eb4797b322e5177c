"""The optional second model: the cross-encoder reranker, loaded on the first request that needs
it (or at startup with preload_reranker) and unloaded after reranker_idle_unload_s unused.

Loading runs in a thread (the event loop and the embedding model keep serving); requests that
need the reranker meanwhile wait for the same load. Its pairs go through the daemon's one model
thread and scheduler (serve/worker.py), so they share the token budget and interactive requests
come before bulk ones. A request holds the reranker from before it is loaded until its scores
are back, so it is never unloaded under a request. Unloading drops every reference, collects
and hands the freed memory back to the system (RSS comes back: bench/rerank_bench.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from localrank.config import Settings
from localrank.engine.rerank import CrossEncoder
from localrank.errors import InvalidInput, LocalrankError, RerankerUnavailable
from localrank.ops import allocator
from localrank.serve.threads import in_own_thread

log = logging.getLogger(__name__)

RerankerLoader = Callable[[Settings], CrossEncoder]


class CrossEncoderSlot:
    def __init__(self, settings: Settings, loader: RerankerLoader) -> None:
        self.settings = settings
        self.configured = settings.reranker
        self.idle_unload_s = settings.reranker_idle_unload_s
        self.loader = loader
        self.reranker: CrossEncoder | None = None
        self.last_error: str | None = None
        self.loads = 0
        self.unloads = 0
        self.last_load_seconds: float | None = None
        self._lock = asyncio.Lock()
        self._holders = 0
        self._timer: asyncio.TimerHandle | None = None
        self._closing: set[asyncio.Future[None]] = set()

    @property
    def loaded(self) -> bool:
        return self.reranker is not None

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[CrossEncoder]:
        """The loaded reranker (loading it first if need be), kept loaded while held."""
        if self.configured is None:
            raise InvalidInput(
                "no reranker is configured: start the daemon with --reranker MODEL "
                "(or set reranker in config.toml / LOCALRANK_RERANKER)",
                param="method",
            )
        self._holders += 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        try:
            reranker = await self._load()
            yield reranker
        finally:
            self._holders -= 1
            if self._holders == 0:
                self._schedule_unload()

    async def _load(self) -> CrossEncoder:
        async with self._lock:
            if self.reranker is not None:
                return self.reranker
            started = time.monotonic()
            try:
                reranker = await in_own_thread(
                    self.loader, self.settings, name="localrank-reranker-load"
                )
            except LocalrankError as exc:
                self.last_error = exc.message
                raise RerankerUnavailable(
                    f"the reranker {self.configured} cannot be loaded: {exc.message}"
                ) from exc
            except Exception as exc:  # a library failure: still a clear answer
                log.exception("reranker failed to load")
                self.last_error = f"{type(exc).__name__}: {exc}"
                raise RerankerUnavailable(
                    f"the reranker {self.configured} cannot be loaded: {self.last_error}"
                ) from exc
            self.reranker = reranker
            self.last_error = None
            self.loads += 1
            self.last_load_seconds = time.monotonic() - started
            log.info("reranker loaded in %.2fs", self.last_load_seconds)
            return reranker

    def _schedule_unload(self) -> None:
        if self.idle_unload_s <= 0 or self.reranker is None:
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.idle_unload_s, self._expire)

    def _expire(self) -> None:
        self._timer = None
        if self._holders or self.reranker is None or self._lock.locked():
            return
        reranker, self.reranker = self.reranker, None
        self.unloads += 1
        log.info("reranker unloaded after %.0fs unused", self.idle_unload_s)
        task = asyncio.ensure_future(asyncio.to_thread(_release, reranker))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def preload(self) -> None:
        """Load now (startup with preload_reranker); a failure is logged and reported."""
        try:
            async with self.hold():
                pass
        except LocalrankError as exc:
            log.error("%s", exc.message)

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self._closing):
            await task
        if self.reranker is not None:
            reranker, self.reranker = self.reranker, None
            await asyncio.to_thread(_release, reranker)

    def status(self, bi_encoder_method: str) -> dict[str, Any]:
        """What /health, /info and /v1/models report about reranking."""
        reranker = self.reranker
        out: dict[str, Any] = {
            "configured": self.configured,
            "loaded": reranker is not None,
            "rerank_method": "cross-encoder" if self.configured else bi_encoder_method,
            "idle_unload_s": self.idle_unload_s,
            "loads": self.loads,
            "unloads": self.unloads,
            "last_load_seconds": self.last_load_seconds,
            "error": self.last_error,
        }
        if reranker is not None:
            out.update(reranker.info.to_dict())
        return out


def _release(reranker: CrossEncoder) -> None:
    """Close and let go: the weights' maps and copies, then the allocator's free pages."""
    reranker.close()
    del reranker
    gc.collect()
    allocator.trim()
