"""One thread owns the model and runs the passes a scheduling policy decides.

Requests are tokenised off the model thread, on a tokeniser thread of their own, one slice of a
bounded size at a time: the tokeniser holds at most one slice per request, so a 2,000-text
request and a one-text request take turns there too, and the model starts on a big request's
first slice while the rest is still being tokenised.

The thread executes what the scheduling policy (serve/scheduling.py's PassPolicy) decides: the
next pass (one item from each waiting request in turn, interactive before bulk, filled to the
token budget when only short requests wait, sized by time when a long one does), and, in a pause
between two layers of a pass (torch; MLX runs its graph at once), whether to run a pass for short
requests waiting behind it: so a one-text request waits about one stretch, not behind a
2,000-text request or an ingestion, and under saturation by one-text requests passes stay full.
The queue is bounded: when it is full, `submit` raises Overloaded at once (429 + Retry-After)
instead of queueing without limit.

A request whose caller went away (the client disconnected and aiohttp cancelled the handler) has
the rest of its tokenisation skipped and its queued items dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import numpy as np

from localrank.engine.core import Engine
from localrank.engine.tokenizer import Encoded
from localrank.engine.types import Pause
from localrank.errors import NotReady, Overloaded
from localrank.serve.scheduling import Pass, PassPolicy

log = logging.getLogger(__name__)

Inputs = Sequence[str] | Sequence[Sequence[int]]

# One turn on the tokeniser thread: at most this many texts, or characters to tokenise (a long
# text counts what the tokenizer reads of it, a prefix): ~10-30 ms of tokenising.
SLICE_TEXTS = 256
# After work, the model thread calls on_idle once nothing has come for this long.
IDLE_SECONDS = 1.0
SLICE_CHARS = 64 * 1024
# A request tokenised in slices stays at most this many passes' tokens ahead of the model. Left
# to race, the tokeniser thread runs through a long request while the model is still seconds
# behind it, holding a core the model's threads and the short requests beside it need.
LEAD_PASSES = 4
# A request of at most this many texts and characters is tokenised on the event loop: a
# sentence takes tens of microseconds there, less than a hop to the tokeniser thread and back
# (which also wakes a thread on a machine whose cores the model is using).
INLINE_TEXTS = 4
INLINE_CHARS = 2000
LEAD_POLL_SECONDS = 0.005


class ForwardModel(Protocol):
    """What a forward pass runs: the embedding Engine, or a cross-encoder CrossEncoder (whose
    "vectors" are [N, 1] logits). One pass holds the items of one runner only."""

    @property
    def dim(self) -> int: ...

    def run(self, encoded: Sequence[Encoded], pause: Pause | None = None) -> np.ndarray: ...


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
    nested: bool = False  # run inside another pass's pause


@dataclass(eq=False)
class ModelRequest:
    size: int
    bulk: bool
    future: asyncio.Future[WorkResult]
    loop: asyncio.AbstractEventLoop
    vectors: np.ndarray
    runner: Any  # the ForwardModel its items go through
    encoded: list[Encoded] = field(default_factory=list)  # tokenised so far (model thread)
    scheduled: int = 0  # items handed to a forward pass
    embedded: int = 0
    tokens_sent: int = 0  # tokens of its items handed to the model thread (event loop)
    tokens_done: int = 0  # tokens of its items embedded (model thread)
    queued: bool = False  # in the scheduler's turn order
    arrived: float = field(default_factory=time.perf_counter)  # submitted
    started: bool = False  # an item of it has been in a pass
    # Failed, cancelled or answered: nothing more to do. Set from either thread; read by the
    # model thread before it schedules an item.
    closed: bool = False

    def settle(self, result: WorkResult | None = None, error: BaseException | None = None) -> None:
        self.closed = True

        def apply() -> None:
            if self.future.done():  # the client went away
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(result)  # type: ignore[arg-type]

        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            self.loop.call_soon_threadsafe(apply)


def _slices(inputs: Inputs, work: Callable[[str], int]) -> Iterator[list]:  # type: ignore[type-arg]
    """Consecutive runs of inputs, each one turn on the tokeniser; `work` is what tokenising a
    text costs, in characters. Token ids come in one run (they are only checked and wrapped)."""
    if not inputs or not isinstance(inputs[0], str):
        yield list(inputs)
        return
    part: list[str] = []
    chars = 0
    for text in inputs:
        cost = work(text)  # type: ignore[arg-type]
        if part and (len(part) >= SLICE_TEXTS or chars + cost > SLICE_CHARS):
            yield part
            part, chars = [], 0
        part.append(text)  # type: ignore[arg-type]
        chars += cost
    yield part


def _inline(part: Inputs, work: Callable[[str], int]) -> bool:
    """Whether a request is small enough to tokenise on the event loop itself."""
    if len(part) > INLINE_TEXTS:
        return False
    chars = 0
    for text in part:
        if not isinstance(text, str):
            return True  # token ids: only checked and wrapped
        chars += work(text)
    return chars <= INLINE_CHARS


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
        preempt_ms: float = 0.0,
        on_batch: Callable[[BatchStats], None] | None = None,
        on_idle: Callable[[], object] | None = None,
        on_wait: Callable[[str, float], None] | None = None,
    ) -> None:
        self.engine = engine
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.batch_wait = batch_wait_ms / 1000.0
        self.preempt_seconds = preempt_ms / 1000.0
        self.queue_size = queue_size
        self.on_batch = on_batch
        self.on_idle = on_idle  # on the model thread, once it has idled IDLE_SECONDS after work
        # (request class, seconds from submission to its first item in a pass)
        self.on_wait = on_wait
        self.policy = PassPolicy(
            max_batch_tokens=max_batch_tokens,
            max_batch_size=max_batch_size,
            preempt_seconds=self.preempt_seconds,
        )
        self._inbox: queue.SimpleQueue[tuple[ModelRequest, list[Encoded]] | None] = (
            queue.SimpleQueue()
        )
        self._jobs: set[ModelRequest] = set()  # submitted and not yet returned (event loop only)
        self._stopping = False
        self._stop_seen = False  # (model thread)
        # Two tokeniser threads: requests that fit one slice, and the slices of longer ones, so a
        # short request never waits behind a long one's slice (tens of ms on a busy machine).
        self._tokenizer = ThreadPoolExecutor(1, thread_name_prefix="localrank-tokenizer")
        self._slicer = ThreadPoolExecutor(1, thread_name_prefix="localrank-tokenizer-slices")
        self._thread = threading.Thread(target=self._run, name="localrank-model", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Requests waiting for or inside the model."""
        return len(self._jobs)

    async def submit(
        self,
        inputs: Inputs,
        *,
        truncate: bool = True,
        bulk: bool = False,
        runner: ForwardModel | None = None,
        prepare: Callable[[Sequence[str]], list[Encoded]] | None = None,
    ) -> WorkResult:
        """Run `inputs` through the engine (default), or through `runner` with `prepare` as
        its tokenisation (a reranker: the pairs of one query and these documents)."""
        if self._stopping:
            raise NotReady("the daemon is shutting down")
        if len(self._jobs) >= self.queue_size:
            raise Overloaded(
                f"{len(self._jobs)} requests are waiting for the model; retry shortly",
                retry_after=1.0,
            )
        loop = asyncio.get_running_loop()
        model: ForwardModel = self.engine if runner is None else runner
        vectors = np.empty((len(inputs), model.dim), dtype=np.float32)
        job = ModelRequest(len(inputs), bulk, loop.create_future(), loop, vectors, model)
        self._jobs.add(job)
        work = self.engine.tokenizer.work if prepare is None else len
        lead = LEAD_PASSES * self.max_batch_tokens
        try:
            parts = list(_slices(inputs, work))
            sliced = len(parts) > 1  # every slice on the slices' thread
            pool = self._slicer if sliced else self._tokenizer
            for part in parts:
                while job.tokens_sent - job.tokens_done > lead and not job.closed:
                    await asyncio.sleep(LEAD_POLL_SECONDS)
                if prepare is None:
                    tokenise = partial(self._prepare, part, truncate)
                else:
                    tokenise = partial(prepare, part)
                if not sliced and _inline(part, work):
                    encoded = tokenise()  # tens of microseconds: cheaper than a thread hop
                else:
                    encoded = await loop.run_in_executor(pool, tokenise)
                job.tokens_sent += sum(len(e.ids) for e in encoded)
                self._inbox.put((job, encoded))
            return await job.future
        finally:
            # Answered, failed (bad input) or cancelled (the client went away): either way the
            # model thread drops whatever of it is still queued.
            job.closed = True
            self._jobs.discard(job)

    def _prepare(self, part: Inputs, truncate: bool) -> list[Encoded]:
        """(On the tokeniser thread.)"""
        return self.engine.prepare(part, truncate=truncate)

    def stop(self, timeout: float = 10.0) -> None:
        """Finish queued work, then end the threads; what could not finish is answered 503."""
        self._stopping = True
        self._inbox.put(None)
        self._thread.join(timeout)
        self._tokenizer.shutdown(wait=False, cancel_futures=True)
        self._slicer.shutdown(wait=False, cancel_futures=True)
        for job in list(self._jobs):
            job.settle(error=NotReady("the daemon is shutting down"))

    # --- model thread ----------------------------------------------------------------------

    def _run(self) -> None:
        worked = False
        while not (self._stop_seen and not self.policy.waiting):
            if not self.policy.waiting:
                try:  # idle: block (after work, for a moment first)
                    message = self._inbox.get(timeout=IDLE_SECONDS if worked else None)
                except queue.Empty:
                    worked = False
                    if self.on_idle is not None:
                        self.on_idle()
                    continue
                if message is None:
                    self._stop_seen = True
                    continue
                self._accept(message)
                # Just woke up: give concurrent requests a moment to join this batch, unless
                # this is the only request in flight (then waiting is pure latency).
                wait = self.batch_wait if len(self._jobs) > 1 else 0.0
                deadline = time.perf_counter() + wait
                while (remaining := deadline - time.perf_counter()) > 0:
                    try:
                        message = self._inbox.get(timeout=remaining)
                    except queue.Empty:
                        break
                    if message is None:
                        self._stop_seen = True
                        break
                    self._accept(message)
            self._collect()  # whatever arrived during the last forward pass joins this one
            if self.policy.waiting:
                self._step()
                worked = True

    def _collect(self) -> None:
        while True:
            try:
                message = self._inbox.get_nowait()
            except queue.Empty:
                return
            if message is None:
                self._stop_seen = True
            else:
                self._accept(message)

    def _accept(self, message: tuple[ModelRequest, list[Encoded]]) -> None:
        job, encoded = message
        if job.closed:
            return
        job.encoded.extend(encoded)
        self.policy.add(job)

    def _step(self) -> None:
        """Run the pass the policy decides; in each of its pauses, the pass it decides there."""
        running = self.policy.next_pass()
        if running is None:
            return
        self._waited(running)

        def pause() -> None:
            self._collect()
            nested = self.policy.in_pause(running)
            if nested is not None:
                self._waited(nested)
                self._forward(nested, None)

        self._forward(running, pause)

    def _waited(self, decided: Pass) -> None:
        if self.on_wait is not None:
            for kind, seconds in decided.waits:
                self.on_wait(kind, seconds)

    def _forward(self, decided: Pass, pause: Pause | None) -> None:
        """Run a pass through the model, tell the policy, hand each vector to its request."""
        taken: list[tuple[ModelRequest, int]] = decided.items
        started = time.perf_counter()
        try:
            runner: ForwardModel = taken[0][0].runner
            vectors = runner.run([job.encoded[i] for job, i in taken], pause)
        except Exception as exc:
            log.exception("model call failed")
            for job in {job for job, _ in taken}:
                job.settle(error=exc)
            return
        seconds = time.perf_counter() - started
        self.policy.done(decided, seconds)
        if self.on_batch is not None:
            self.on_batch(
                BatchStats(len(taken), decided.tokens, seconds, decided.requests, decided.nested)
            )
        for (job, i), vector in zip(taken, vectors, strict=True):
            if job.closed:
                continue
            job.vectors[i] = vector
            job.embedded += 1
            job.tokens_done += len(job.encoded[i].ids)
            if job.embedded == job.size:
                job.settle(
                    WorkResult(
                        job.vectors,
                        [len(e.ids) for e in job.encoded],
                        [e.truncated for e in job.encoded],
                    )
                )
