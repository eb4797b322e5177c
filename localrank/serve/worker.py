"""One thread owns the model; a scheduler feeds it fair, time-bounded batches.

Requests are tokenised off the model thread, on a tokeniser thread of their own, one slice of a
bounded size at a time: the tokeniser holds at most one slice per request, so a 2,000-text
request and a one-text request take turns there too, and the model starts on a big request's
first slice while the rest is still being tokenised.

The scheduler serves requests, not items (the way TEI batches, made fair): each forward pass takes
one item from each waiting request in turn (round robin, the turn kept from one pass to the
next), interactive requests before bulk (ingestion) ones, until the pass is full: at the token
budget, at the row limit, or at what the cost of recent passes says it can do in `preempt_ms`
per stretch. A pass pauses between two layers (torch; MLX runs its graph at once) when an
interactive request that has no part in it is waiting, and runs a short pass for it there: so
a one-text request waits about one stretch, not behind a 2,000-text request or an ingestion.
The queue is bounded: when it is full, `submit` raises Overloaded at once (429 + Retry-After)
instead of queueing without limit.

A request whose caller went away (the client disconnected and aiohttp cancelled the handler) has
the rest of its tokenisation skipped and its queued items dropped.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from localrank.engine.core import Engine
from localrank.engine.tokenizer import Encoded
from localrank.engine.types import Pause
from localrank.errors import NotReady, Overloaded

log = logging.getLogger(__name__)

Inputs = Sequence[str] | Sequence[Sequence[int]]

# One turn on the tokeniser thread: at most this many texts, or characters to tokenise (a long
# text counts what the tokenizer reads of it, a prefix): ~10-30 ms of tokenising.
SLICE_TEXTS = 256
# After work, the model thread calls on_idle once nothing has come for this long.
IDLE_SECONDS = 1.0
SLICE_CHARS = 64 * 1024


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
    queued: bool = False  # in the scheduler's turn order
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


class PassCost:
    """Seconds a forward pass of n tokens takes, a + b*n, fitted by least squares on recent
    passes (older ones decay), so the fixed cost of a pass is not mistaken for a cost per token."""

    def __init__(self, decay: float = 0.95) -> None:
        self.decay = decay
        self._w = self._n = self._t = self._nn = self._nt = 0.0

    def add(self, tokens: int, seconds: float) -> None:
        d = self.decay
        self._w = self._w * d + 1.0
        self._n = self._n * d + tokens
        self._t = self._t * d + seconds
        self._nn = self._nn * d + tokens * tokens
        self._nt = self._nt * d + tokens * seconds

    def fit(self) -> tuple[float, float] | None:
        """(seconds per pass, seconds per token), or None before any pass with tokens."""
        if self._n <= 0:
            return None
        spread = self._w * self._nn - self._n * self._n
        slope = (self._w * self._nt - self._n * self._t) / spread if spread > 1e-9 else 0.0
        if slope <= 0:  # passes of one size only (or noise): all of the time per token
            return 0.0, self._t / self._n
        return max(0.0, (self._t - slope * self._n) / self._w), slope

    def tokens_within(self, seconds: float) -> int | None:
        fitted = self.fit()
        if fitted is None:
            return None
        fixed, per_token = fitted
        return int(max(0.0, seconds - fixed) / per_token) if per_token > 0 else None


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


def _tokens(items: list[tuple[ModelRequest, int]]) -> int:
    """Tokens in a pass's items (request, index of its input)."""
    return sum(len(job.encoded[i].ids) for job, i in items)


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
    ) -> None:
        self.engine = engine
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.batch_wait = batch_wait_ms / 1000.0
        self.preempt_seconds = preempt_ms / 1000.0
        self.queue_size = queue_size
        self.on_batch = on_batch
        self.on_idle = on_idle  # on the model thread, once it has idled IDLE_SECONDS after work
        self.cost = PassCost()
        self._inbox: queue.SimpleQueue[tuple[ModelRequest, list[Encoded]] | None] = (
            queue.SimpleQueue()
        )
        self._jobs: set[ModelRequest] = set()  # submitted and not yet returned (event loop only)
        self._stopping = False
        # The model thread's own state: the turn orders, and what the last pass showed.
        self._interactive: collections.deque[ModelRequest] = collections.deque()
        self._bulk: collections.deque[ModelRequest] = collections.deque()
        self._stop_seen = False
        self._segments = 1  # stretches between pauses in the last pass (layers, on torch)
        self._tokenizer = ThreadPoolExecutor(1, thread_name_prefix="localrank-tokenizer")
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
        try:
            for part in _slices(inputs, work):
                if prepare is None:
                    encoded = await loop.run_in_executor(
                        self._tokenizer, self._prepare, part, truncate
                    )
                else:
                    encoded = await loop.run_in_executor(self._tokenizer, prepare, part)
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
        for job in list(self._jobs):
            job.settle(error=NotReady("the daemon is shutting down"))

    # --- model thread ----------------------------------------------------------------------

    def _run(self) -> None:
        worked = False
        while not (self._stop_seen and not self._interactive and not self._bulk):
            if not self._interactive and not self._bulk:
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
            if self._interactive or self._bulk:
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
        if not job.queued:
            job.queued = True
            (self._bulk if job.bulk else self._interactive).append(job)

    def _budget(self, segments: int) -> int:
        """Tokens for a pass that pauses `segments - 1` times: each stretch between two pauses
        should take about preempt_ms by the measured cost of recent passes."""
        if self.preempt_seconds <= 0:
            return self.max_batch_tokens
        within = self.cost.tokens_within(self.preempt_seconds * segments)
        return self.max_batch_tokens if within is None else min(within, self.max_batch_tokens)

    def _take(
        self,
        turns: collections.deque[ModelRequest],
        budget: int,
        taken: list[tuple[ModelRequest, int]],
    ) -> bool:
        """Add one item from each waiting request in `turns`, in turn, to `taken` until the pass
        is full (then False). The request served last moves to the back, so the next pass
        starts after it."""
        tokens = _tokens(taken)
        runner = taken[0][0].runner if taken else None
        skipped = 0  # requests for another model passed over since the last item taken
        while turns and len(taken) < self.max_batch_size and skipped < len(turns):
            job = turns[0]
            if job.closed or job.scheduled >= len(job.encoded):
                # Gone, or waiting for its next slice to be tokenised (which re-queues it).
                turns.popleft()
                job.queued = False
                continue
            if runner is not None and job.runner is not runner:
                turns.rotate(-1)  # another model's turn comes in a pass of its own
                skipped += 1
                continue
            runner = job.runner
            skipped = 0
            n = len(job.encoded[job.scheduled].ids)
            if taken and tokens + n > budget:
                return False
            taken.append((job, job.scheduled))
            job.scheduled += 1
            tokens += n
            turns.rotate(-1)
        return len(taken) < self.max_batch_size

    def _newcomers(self, running: set[int], budget: int) -> list[tuple[ModelRequest, int]]:
        """For a pass run inside another's pause: one item from each waiting interactive
        request that has none in the running pass, as many as fit in `budget` tokens."""
        taken: list[tuple[ModelRequest, int]] = []
        tokens = 0
        for job in list(self._interactive):
            if id(job) in running or job.closed or job.scheduled >= len(job.encoded):
                continue
            if taken and job.runner is not taken[0][0].runner:
                continue
            n = len(job.encoded[job.scheduled].ids)
            if tokens + n > budget or len(taken) >= self.max_batch_size:
                break
            taken.append((job, job.scheduled))
            job.scheduled += 1
            tokens += n
            self._interactive.remove(job)  # served: its next turn comes after the others'
            self._interactive.append(job)
        return taken

    def _step(self) -> None:
        """One forward pass: interactive requests first, then bulk ones. Between two of its
        layers, interactive requests that arrived meanwhile run a short pass of their own."""
        taken: list[tuple[ModelRequest, int]] = []
        budget = self._budget(self._segments)
        if self._take(self._interactive, budget, taken):
            self._take(self._bulk, budget, taken)
        if not taken:
            return
        running = {id(job) for job, _ in taken}
        tokens = _tokens(taken)
        stretch = tokens // self._segments
        # Each pause's pass fits in one stretch (by the cost model, or one stretch of this pass
        # when that is more; just the stretch while the model is unknown), and all of them
        # together take at most as many tokens as this pass: it may take twice as long, never
        # longer. (Unbounded, requests arriving steadily starved a pass: each pause ran every
        # newcomer, the pass never ended, and a request in it waited until its client gave up.)
        within = self.cost.tokens_within(self.preempt_seconds) if self.preempt_seconds else None
        per_pause = stretch if within is None else max(min(within, self.max_batch_tokens), stretch)
        allowance = [tokens]
        pauses = [0]
        nested = [0.0]

        def pause() -> None:
            pauses[0] += 1
            self._collect()
            if self._interactive and allowance[0] > 0:
                waiting = self._newcomers(running, min(per_pause, allowance[0]))
                if waiting:
                    n = _tokens(waiting)
                    allowance[0] -= n
                    seconds = self._forward(waiting, None)
                    nested[0] += seconds
                    self.cost.add(n, seconds)  # so the model is known after the first pause

        seconds = self._forward(taken, pause)
        self._segments = pauses[0] + 1
        self.cost.add(tokens, seconds - nested[0])

    def _forward(self, taken: list[tuple[ModelRequest, int]], pause: Pause | None) -> float:
        """Run `taken` through the model, hand each vector to its request; the seconds spent."""
        tokens = _tokens(taken)
        started = time.perf_counter()
        try:
            runner: ForwardModel = taken[0][0].runner
            vectors = runner.run([job.encoded[i] for job, i in taken], pause)
        except Exception as exc:
            log.exception("model call failed")
            for job in {job for job, _ in taken}:
                job.settle(error=exc)
            return time.perf_counter() - started
        seconds = time.perf_counter() - started
        if self.on_batch is not None:
            self.on_batch(BatchStats(len(taken), tokens, seconds, len({id(j) for j, _ in taken})))
        for (job, i), vector in zip(taken, vectors, strict=True):
            if job.closed:
                continue
            job.vectors[i] = vector
            job.embedded += 1
            if job.embedded == job.size:
                job.settle(
                    WorkResult(
                        job.vectors,
                        [len(e.ids) for e in job.encoded],
                        [e.truncated for e in job.encoded],
                    )
                )
        return seconds
