"""The scheduling policy: which items the next forward pass takes, and whether a running pass
runs a short one inside its pause. A plain class over the queue state and the cost model; the
model thread (serve/worker.py) only executes what it decides, so the policy is tested without
threads.

What it decides, and why:

- **Requests, not items, take turns.** A pass takes one item from each waiting request in turn
  (round robin, the turn kept from one pass to the next), interactive requests before bulk
  (ingestion) ones, and the big request advances in every pass it has a turn in.
- **A short request never rides in a long request's pass.** Such a pass is sized to last
  several stretches (below); a one-text request inside it waited all of them (measured: the
  probes of the head-of-line bench fell into step with the passes, one in two answered in a
  whole 160 ms pass instead of a 10 ms one). Short requests waiting when such a pass would start
  run first, in a pass of their own (then the long work's pass: never two in a row); those
  arriving later run in its pauses.
- **Fill when there is nothing to preempt.** When every waiting request is short (a few inputs,
  a small share of a pass's tokens), a pass takes as much as the token budget allows: under
  saturation by one-text requests the daemon runs full passes, not many tiny ones.
- **Size by time only when a long request waits.** When a long request (or a bulk one) is in
  the queue, a pass is sized by the cost of recent passes so that the stretch between two of
  its pauses takes about `preempt_seconds`: a short request arriving meanwhile waits one stretch.
  For a model whose one-text pass is much quicker than that, the stretch is shorter: at most
  STRETCH_PER_SHORT_PASS such passes (a short request's wait stays a multiple of its own time:
  all-MiniLM-L6-v2 in bfloat16 answers in ~7 ms, and waited up to 25 more).
- **Preempt only for a short request behind a long pass.** In a pause between two layers, short
  interactive requests with nothing in the running pass run a pass of their own, if the running
  pass holds a long request's work. A pass of short requests is never paused for another short
  request: the newcomer is next in line.
- **Bounds, so nothing starves.** A pause's pass fits in one stretch, and all of a pass's pauses
  together run at most as many tokens as the pass itself (it takes at most about twice its own
  time); bulk work that interactive requests kept out of `BULK_PATIENCE` passes in a row goes
  first in the next one.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from localrank.engine.tokenizer import Encoded

# A request is short when it has at most this many inputs and this share of a full pass's
# tokens. (Not by the cost model: while it has seen small passes only, their fixed
# cost looks like a cost per token, and one-text requests would look long.)
SHORT_ITEMS = 32
SHORT_SHARE = 0.25
# Bulk work passed over by this many passes in a row goes first in the next one.
BULK_PATIENCE = 4
# A stretch between two pauses takes at most this many one-text passes' time (a one-text pass:
# SHORT_PASS_TOKENS tokens by the cost model), and at least MIN_STRETCH_SECONDS.
STRETCH_PER_SHORT_PASS = 2.0
SHORT_PASS_TOKENS = 32
MIN_STRETCH_SECONDS = 0.005


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


class Queued(Protocol):
    """What the policy reads and updates of a request (the worker's job)."""

    size: int  # inputs in the request
    bulk: bool
    runner: Any  # the model its items go through; a pass holds one runner's items
    encoded: list[Encoded]  # tokenised so far
    scheduled: int  # items handed to a pass
    queued: bool  # in the policy's turn order
    closed: bool  # answered, failed or cancelled: nothing more to schedule
    arrived: float  # clock() when submitted
    started: bool  # an item of it has been handed to a pass


Item = tuple[Any, int]  # (request, index of its input)


def _tokens(items: Sequence[Item]) -> int:
    return sum(len(job.encoded[i].ids) for job, i in items)


@dataclass
class Pass:
    """One forward pass the policy decided, and what its pauses may still spend."""

    items: list[Item]
    tokens: int
    within: Pass | None = None  # the pass in whose pause this one runs
    long: bool = False  # holds work of a long or bulk request: a short one may preempt it
    segments: int = 1  # stretches expected (pauses + 1, from the last pass)
    per_pause: int = 0  # tokens a pause's pass may take
    allowance: int = 0  # tokens all its pauses' passes may still take together
    pauses: int = 0  # pauses seen so far
    nested_seconds: float = 0.0  # spent in passes run inside its pauses
    # (request class, seconds from submission to its first item in a pass), for metrics
    waits: list[tuple[str, float]] = field(default_factory=list)

    @property
    def nested(self) -> bool:
        """Run inside another pass's pause."""
        return self.within is not None

    @property
    def requests(self) -> int:
        return len({id(job) for job, _ in self.items})


class PassPolicy:
    """Decides passes from the queue state and the cost model (see the module docstring)."""

    def __init__(
        self,
        *,
        max_batch_tokens: int,
        max_batch_size: int,
        preempt_seconds: float = 0.0,
        cost: PassCost | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.preempt_seconds = preempt_seconds
        self.cost = cost if cost is not None else PassCost()
        self.clock = clock
        self.interactive: collections.deque[Any] = collections.deque()
        self.bulk: collections.deque[Any] = collections.deque()
        self.segments = 1  # stretches between pauses in the last pass (layers, on torch)
        self.bulk_passed_over = 0  # passes in a row that left waiting bulk work out
        self.shorts_went_first = False  # the last pass ran short requests ahead of long work

    # --- the queue ---------------------------------------------------------------------------

    def add(self, job: Queued) -> None:
        """`job` has new tokenised items: it takes turns until they are scheduled."""
        if job.closed or job.queued:
            return
        job.queued = True
        (self.bulk if job.bulk else self.interactive).append(job)

    @property
    def waiting(self) -> bool:
        return bool(self.interactive or self.bulk)

    @staticmethod
    def _ready(job: Queued) -> bool:
        return not job.closed and job.scheduled < len(job.encoded)

    def _prune(self, turns: collections.deque[Any]) -> None:
        """Drop requests that are gone or wait for their next slice (it re-queues them)."""
        for job in [j for j in turns if not self._ready(j)]:
            turns.remove(job)
            job.queued = False

    def short(self, job: Queued) -> bool:
        """Interactive, fully tokenised, and small: at most SHORT_ITEMS inputs and SHORT_SHARE
        of the token budget in all. (The whole request, not what is left of it: the end of a
        long request is not a short one, or its last pass would fill beyond the time budget.)"""
        if job.bulk or job.size > SHORT_ITEMS or len(job.encoded) < job.size:
            return False
        return sum(len(e.ids) for e in job.encoded) <= SHORT_SHARE * self.max_batch_tokens

    def kind(self, job: Queued) -> str:
        """The request's class in metrics: bulk, long or short."""
        return "bulk" if job.bulk else "short" if self.short(job) else "long"

    # --- decisions ---------------------------------------------------------------------------

    def budget(self, long_waiting: bool) -> int:
        """Tokens for the next pass: the whole budget, unless a long request waits; then what
        the cost model says runs in `preempt_seconds` per stretch."""
        if not long_waiting or self.preempt_seconds <= 0:
            return self.max_batch_tokens
        within = self.cost.tokens_within(self.stretch_seconds() * self.segments)
        return self.max_batch_tokens if within is None else min(within, self.max_batch_tokens)

    def stretch_seconds(self) -> float:
        """The time between two pauses of a pass sized by time: `preempt_seconds`, or less for
        a model whose one-text pass takes a small fraction of it."""
        fitted = self.cost.fit()
        if fitted is None:
            return self.preempt_seconds
        fixed, per_token = fitted
        short = STRETCH_PER_SHORT_PASS * (fixed + per_token * SHORT_PASS_TOKENS)
        return min(self.preempt_seconds, max(MIN_STRETCH_SECONDS, short))

    def next_pass(self) -> Pass | None:
        """The next pass, or None when nothing is ready."""
        self._prune(self.interactive)
        self._prune(self.bulk)
        if not self.waiting:
            return None
        longs = {id(j) for j in (*self.interactive, *self.bulk) if not self.short(j)}
        within = self.cost.tokens_within(self.stretch_seconds()) if self.preempt_seconds else None
        stretch = self.max_batch_tokens if within is None else min(within, self.max_batch_tokens)
        if longs and not self.shorts_went_first:
            ahead = self._shorts(stretch, set(), at_least_one=True)
            if ahead is not None:
                self.shorts_went_first = True
                return self._decided(*ahead, longs=longs, within=within)
        self.shorts_went_first = False
        budget = self.budget(bool(longs))
        taken: list[Item] = []
        starts: list[tuple[str, float]] = []
        bulk_first = bool(self.bulk) and self.bulk_passed_over >= BULK_PATIENCE
        order = (self.bulk, self.interactive) if bulk_first else (self.interactive, self.bulk)
        # With long work in the pass, short requests wait for its first pause instead.
        leave = self.short if longs else None
        for turns in order:
            if not self._take(turns, budget, taken, starts, leave):
                break
        if not taken:
            return None
        return self._decided(taken, starts, _tokens(taken), longs=longs, within=within)

    def _decided(
        self,
        taken: list[Item],
        starts: list[tuple[str, float]],
        tokens: int,
        *,
        longs: set[int],
        within: int | None,
    ) -> Pass:
        took_bulk = any(job.bulk for job, _ in taken)
        self.bulk_passed_over = 0 if took_bulk or not self.bulk else self.bulk_passed_over + 1
        p = Pass(taken, tokens, long=any(id(job) in longs for job, _ in taken))
        p.segments = self.segments
        stretch = tokens // self.segments
        p.per_pause = (
            stretch if within is None else max(min(within, self.max_batch_tokens), stretch)
        )
        p.allowance = tokens
        p.waits = self._waits(starts)
        return p

    def _waits(self, starts: list[tuple[str, float]]) -> list[tuple[str, float]]:
        now = self.clock()
        return [(kind, now - arrived) for kind, arrived in starts]

    def _take(
        self,
        turns: collections.deque[Any],
        budget: int,
        taken: list[Item],
        starts: list[tuple[str, float]],
        leave: Callable[[Any], bool] | None = None,
    ) -> bool:
        """Add one item from each waiting request in `turns`, in turn, to `taken` until the pass
        is full (then False). The request served last moves to the back, so the next pass
        starts after it. Requests `leave` says yes to keep their place and wait."""
        tokens = _tokens(taken)
        runner = taken[0][0].runner if taken else None
        skipped = 0  # requests for another model passed over since the last item taken
        while turns and len(taken) < self.max_batch_size and skipped < len(turns):
            job = turns[0]
            if not self._ready(job):
                turns.popleft()
                job.queued = False
                continue
            if (runner is not None and job.runner is not runner) or (leave and leave(job)):
                turns.rotate(-1)  # another model's pass, or a later one: it keeps its place
                skipped += 1
                continue
            runner = job.runner
            skipped = 0
            n = len(job.encoded[job.scheduled].ids)
            if taken and tokens + n > budget:
                return False
            self._start(job, starts)
            taken.append((job, job.scheduled))
            job.scheduled += 1
            tokens += n
            turns.rotate(-1)
        return len(taken) < self.max_batch_size

    def _start(self, job: Queued, starts: list[tuple[str, float]]) -> None:
        """Note the request's class and arrival when its first item goes into a pass."""
        if not job.started:
            job.started = True
            starts.append((self.kind(job), job.arrived))

    def in_pause(self, running: Pass) -> Pass | None:
        """Called between two layers of `running`: a pass of short interactive requests with
        nothing in it, if it holds a long request's work; else None. (Also in its last stretch:
        a short request that waited for the pass to end would wait for the next one too, which
        holds the long request's work, sized by time.)"""
        running.pauses += 1
        if not running.long or running.allowance <= 0 or not self.interactive:
            return None
        found = self._shorts(
            min(running.per_pause, running.allowance), {id(job) for job, _ in running.items}
        )
        if found is None:
            return None
        taken, starts, tokens = found
        running.allowance -= tokens
        return Pass(taken, tokens, within=running, waits=self._waits(starts))

    def _shorts(
        self, budget: int, inside: set[int], *, at_least_one: bool = False
    ) -> tuple[list[Item], list[tuple[str, float]], int] | None:
        """Whole short interactive requests not in `inside`, in turn, within `budget` tokens
        (`at_least_one`: the first whatever its size), for one model: (items, starts, tokens),
        or None."""
        taken: list[Item] = []
        starts: list[tuple[str, float]] = []
        tokens = 0
        for job in list(self.interactive):
            if id(job) in inside or not self._ready(job) or not self.short(job):
                continue
            if taken and job.runner is not taken[0][0].runner:
                continue  # another model's requests wait for a pause of their own
            need = sum(len(e.ids) for e in job.encoded[job.scheduled :])
            rows = len(job.encoded) - job.scheduled
            over = tokens + need > budget or len(taken) + rows > self.max_batch_size
            if over and (taken or not at_least_one):
                break
            self._start(job, starts)
            taken.extend((job, i) for i in range(job.scheduled, len(job.encoded)))
            job.scheduled = len(job.encoded)
            tokens += need
            self.interactive.remove(job)  # served: its next turn comes after the others'
            self.interactive.append(job)
        return (taken, starts, tokens) if taken else None

    def done(self, p: Pass, seconds: float) -> None:
        """`p` ran in `seconds` (a pass's own time includes its pauses' passes): the cost
        model learns from it. Called before its requests are answered, so the next request
        of the same client meets a policy that knows it."""
        if p.within is not None:
            p.within.nested_seconds += seconds
            self.cost.add(p.tokens, seconds)  # so the model is known after the first pause
            return
        self.segments = p.pauses + 1
        self.cost.add(p.tokens, seconds - p.nested_seconds)
