"""One thread owns the model; a scheduler feeds it merged, token-budget batches.

Requests from many connections are tokenized and merged in the worker thread (the way TEI
batches): every forward pass takes interactive work first, then bulk (ingestion) work, up to the
token budget, so a long index job delays an editor's query by one batch at most. Large client
arrays are split into items and so into several passes. The queue is bounded: when it is full,
`submit` raises Overloaded at once (429 + Retry-After) instead of queueing without limit.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from localrank.engine.core import Engine
from localrank.engine.tokenizer import Encoded
from localrank.errors import NotReady, Overloaded

log = logging.getLogger(__name__)

Inputs = Sequence[str] | Sequence[Sequence[int]]


@dataclass(frozen=True)
class WorkResult:
    vectors: np.ndarray  # float32 [N, dim], normalised by the recipe, native dim
    tokens: list[int]  # tokens each input used
    truncated: list[bool]


@dataclass(frozen=True)
class BatchStats:
    """One forward pass, reported to metrics."""

    rows: int
    tokens: int
    seconds: float
    requests: int


@dataclass(eq=False)
class _Job:
    inputs: Inputs
    truncate: bool
    bulk: bool
    future: asyncio.Future[WorkResult]
    loop: asyncio.AbstractEventLoop
    encoded: list[Encoded] = field(default_factory=list)
    vectors: np.ndarray | None = None
    remaining: int = 0

    def settle(self, result: WorkResult | None = None, error: BaseException | None = None) -> None:
        def apply() -> None:
            if self.future.done():  # the client went away
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(result)  # type: ignore[arg-type]

        self.loop.call_soon_threadsafe(apply)


class ModelWorker:
    """Owns `engine` on a dedicated thread. `submit` is called from the event loop."""

    def __init__(
        self,
        engine: Engine,
        *,
        max_batch_tokens: int,
        max_batch_size: int,
        batch_wait_ms: float,
        queue_size: int,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        self.engine = engine
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.batch_wait = batch_wait_ms / 1000.0
        self.queue_size = queue_size
        self.on_batch = on_batch
        self._inbox: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._pending = 0  # jobs submitted and not yet settled (read under the GIL)
        self._lock = threading.Lock()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="localrank-model", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Requests waiting for or inside the model."""
        return self._pending

    async def submit(
        self, inputs: Inputs, *, truncate: bool = True, bulk: bool = False
    ) -> WorkResult:
        if self._stopping:
            raise NotReady("the daemon is shutting down")
        with self._lock:
            if self._pending >= self.queue_size:
                raise Overloaded(
                    f"{self._pending} requests are waiting for the model; retry shortly",
                    retry_after=1.0,
                )
            self._pending += 1
        loop = asyncio.get_running_loop()
        job = _Job(inputs, truncate, bulk, loop.create_future(), loop)
        self._inbox.put(job)
        try:
            return await job.future
        finally:
            with self._lock:
                self._pending -= 1

    def stop(self, timeout: float = 10.0) -> None:
        """Finish queued work, then end the thread."""
        self._stopping = True
        self._inbox.put(None)
        self._thread.join(timeout)

    # --- worker thread ---------------------------------------------------------------------

    def _run(self) -> None:
        interactive: collections.deque[tuple[_Job, int]] = collections.deque()
        bulk: collections.deque[tuple[_Job, int]] = collections.deque()
        stop = False
        while not (stop and not interactive and not bulk):
            if not interactive and not bulk:
                job = self._inbox.get()  # idle: block
                if job is None:
                    stop = True
                    continue
                self._accept(job, interactive, bulk)
                # Just woke up: give concurrent requests a moment to join this batch, unless
                # this is the only request in flight (then waiting is pure latency).
                wait = self.batch_wait if self._pending > 1 else 0.0
                deadline = time.perf_counter() + wait
                while (remaining := deadline - time.perf_counter()) > 0:
                    try:
                        job = self._inbox.get(timeout=remaining)
                    except queue.Empty:
                        break
                    if job is None:
                        stop = True
                        break
                    self._accept(job, interactive, bulk)
            # Whatever arrived during the last forward pass joins this one.
            while True:
                try:
                    job = self._inbox.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    continue
                self._accept(job, interactive, bulk)
            if interactive or bulk:
                self._step(interactive, bulk)

    def _accept(
        self,
        job: _Job,
        interactive: collections.deque[tuple[_Job, int]],
        bulk: collections.deque[tuple[_Job, int]],
    ) -> None:
        if job.future.cancelled():
            return
        try:
            job.encoded = self.engine.prepare(job.inputs, truncate=job.truncate)
        except Exception as exc:  # bad input: only this request fails
            job.settle(error=exc)
            return
        job.vectors = np.empty((len(job.encoded), self.engine.dim), dtype=np.float32)
        job.remaining = len(job.encoded)
        target = bulk if job.bulk else interactive
        target.extend((job, i) for i in range(len(job.encoded)))

    def _take(
        self,
        interactive: collections.deque[tuple[_Job, int]],
        bulk: collections.deque[tuple[_Job, int]],
    ) -> list[tuple[_Job, int]]:
        taken: list[tuple[_Job, int]] = []
        tokens = 0
        for source in (interactive, bulk):
            while source and len(taken) < self.max_batch_size:
                job, i = source[0]
                if job.remaining < 0 or job.future.done():  # failed or cancelled: drop
                    source.popleft()
                    continue
                n = len(job.encoded[i].ids)
                if taken and tokens + n > self.max_batch_tokens:
                    return taken
                source.popleft()
                taken.append((job, i))
                tokens += n
        return taken

    def _step(
        self,
        interactive: collections.deque[tuple[_Job, int]],
        bulk: collections.deque[tuple[_Job, int]],
    ) -> None:
        taken = self._take(interactive, bulk)
        if not taken:
            return
        started = time.perf_counter()
        try:
            vectors = self.engine.run([job.encoded[i] for job, i in taken])
        except Exception as exc:
            log.exception("model call failed")
            for job in {job for job, _ in taken}:
                job.settle(error=exc)
                job.remaining = -1
            return
        for (job, i), vector in zip(taken, vectors, strict=True):
            if job.remaining <= 0 or job.vectors is None:
                continue
            job.vectors[i] = vector
            job.remaining -= 1
            if job.remaining == 0:
                job.settle(
                    WorkResult(
                        job.vectors,
                        [len(e.ids) for e in job.encoded],
                        [e.truncated for e in job.encoded],
                    )
                )
        if self.on_batch is not None:
            self.on_batch(
                BatchStats(
                    len(taken),
                    sum(len(job.encoded[i].ids) for job, i in taken),
                    time.perf_counter() - started,
                    len({id(job) for job, _ in taken}),
                )
            )
