"""The scheduling policy alone, without threads or a model: each pass it decides, from a queue
of requests and a cost model fed with pass timings, the way the model thread feeds it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from localrank.engine.tokenizer import Encoded
from localrank.serve.scheduling import (
    BULK_PATIENCE,
    STRETCH_PER_SHORT_PASS,
    Pass,
    PassCost,
    PassPolicy,
)

SECONDS_PER_TOKEN = 0.0005  # the cost model's truth in these tests: 2,000 tokens a second
LAYERS = 6  # stretches of a pass: pauses + 1


@dataclass(eq=False)
class Req:
    """A request as the policy sees it (the worker's job without its future)."""

    name: str
    size: int
    tokens_each: int
    bulk: bool = False
    runner: Any = "embedder"
    arrived: float = 0.0
    encoded: list[Encoded] = field(default_factory=list)
    scheduled: int = 0
    queued: bool = False
    closed: bool = False
    started: bool = False

    def tokenise(self, n: int | None = None) -> Req:
        """The next `n` inputs tokenised (all of them by default)."""
        n = self.size - len(self.encoded) if n is None else n
        self.encoded += [Encoded([1] * self.tokens_each, False, None) for _ in range(n)]
        return self


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def policy(
    clock: Clock | None = None, *, tokens: int = 2048, rows: int = 128, preempt_ms: float = 25.0
) -> PassPolicy:
    """A policy whose cost model has seen passes of a known cost, as after a few requests."""
    cost = PassCost()
    for n in (100, 400, 1000, 2000, 50, 800):
        cost.add(n, 0.002 + SECONDS_PER_TOKEN * n)
    p = PassPolicy(
        max_batch_tokens=tokens,
        max_batch_size=rows,
        preempt_seconds=preempt_ms / 1000,
        cost=cost,
        clock=clock or Clock(),
    )
    p.segments = LAYERS
    return p


def submit(p: PassPolicy, *reqs: Req) -> None:
    for r in reqs:
        p.add(r.tokenise() if not r.encoded else r)


def run(p: PassPolicy, decided: Pass, clock: Clock | None = None) -> None:
    """The model thread's part: the pass pauses between its layers (running what the policy
    decides there), takes its time by the cost model, and is reported done."""
    seconds = 0.002 + SECONDS_PER_TOKEN * decided.tokens
    for _ in range(LAYERS - 1):
        nested = p.in_pause(decided)
        if nested is not None:
            nested_seconds = 0.002 + SECONDS_PER_TOKEN * nested.tokens
            p.done(nested, nested_seconds)
            seconds += nested_seconds
    if clock is not None:
        clock.now += seconds
    p.done(decided, seconds)


def names(decided: Pass) -> list[str]:
    return [job.name for job, _ in decided.items]


def one_texts(n: int, prefix: str = "one", arrived: float = 0.0) -> list[Req]:
    return [Req(f"{prefix}{k}", 1, 20, arrived=arrived) for k in range(n)]


def test_one_text_requests_fill_the_pass_under_saturation() -> None:
    """64 one-text requests waiting: one pass takes them all (the time budget per stretch would
    allow ~1/10 of that), and newcomers during it wait for the next pass instead of running in
    its pauses."""
    p = policy()
    waiting = one_texts(64)
    submit(p, *waiting)
    assert p.budget(long_waiting=True) < 64 * 20  # what the old sizing would have allowed
    decided = p.next_pass()
    assert decided is not None
    assert sorted(names(decided)) == sorted(r.name for r in waiting)
    assert not decided.long
    submit(p, *one_texts(64, "late"))
    for _ in range(LAYERS - 1):
        assert p.in_pause(decided) is None  # nothing to preempt: all of them are short
    p.done(decided, 0.002 + SECONDS_PER_TOKEN * decided.tokens)
    following = p.next_pass()
    assert following is not None and len(following.items) == 64


def test_fill_stops_at_the_token_and_row_limits() -> None:
    p = policy(tokens=500, rows=128)
    submit(p, *one_texts(64))
    decided = p.next_pass()
    assert decided is not None and decided.tokens == 500 and len(decided.items) == 25
    p = policy(tokens=100_000, rows=16)
    submit(p, *one_texts(64))
    decided = p.next_pass()
    assert decided is not None and len(decided.items) == 16


def test_one_text_requests_go_ahead_of_a_2000_text_requests_pass_never_inside_it() -> None:
    """Fairness both ways: one-text requests waiting when the 2,000-text request's next pass
    would start run first, in a pass of their own (a pass sized for the big request's time
    budget would make them wait all of its stretches); the big request's pass comes right
    after, whatever arrived meanwhile, so it advances in every other pass at least."""
    clock = Clock()
    p = policy(clock)
    big = Req("big", 2000, 40)
    submit(p, big)
    first = p.next_pass()
    assert first is not None and set(names(first)) == {"big"} and first.long
    # Sized by time: each of its LAYERS stretches takes about preempt_ms.
    assert first.tokens <= 0.025 * LAYERS / SECONDS_PER_TOKEN
    run(p, first, clock)
    waits = []
    for round_ in range(20):
        small = one_texts(2, f"r{round_}-", arrived=clock.now)  # one stretch's worth
        submit(p, *small)
        ahead = p.next_pass()
        assert ahead is not None and not ahead.long
        assert sorted(names(ahead)) == sorted(r.name for r in small)
        waits += [seconds for kind, seconds in ahead.waits if kind == "short"]
        run(p, ahead, clock)
        late = one_texts(1, f"late{round_}-", arrived=clock.now)
        submit(p, *late)
        following = p.next_pass()
        assert following is not None and set(names(following)) == {"big"}
        # The late one runs in the big pass's first pause, one stretch in.
        nested = p.in_pause(following)
        assert nested is not None and names(nested) == [late[0].name]
        p.done(nested, 0.002 + SECONDS_PER_TOKEN * nested.tokens)
        run(p, following, clock)
    # A one-text request waited for no pass before its own: 0 s on this clock.
    assert len(waits) == 40 and max(waits) == 0.0
    assert not big.closed and 20 <= big.scheduled < big.size


def test_a_short_request_larger_than_a_stretch_still_goes_first() -> None:
    """A short request too big for one stretch's budget (or a pause's) is not left waiting
    behind the long work: it goes first, whole, in a pass of its own."""
    p = policy(tokens=4096)
    submit(p, Req("big", 2000, 40))
    chunky = Req("chunky", 20, 50)  # 1,000 tokens: short (a quarter of the budget at most)
    submit(p, chunky)
    within = p.cost.tokens_within(0.025)
    assert p.short(chunky) and within is not None and within < 1000
    ahead = p.next_pass()
    assert ahead is not None and set(names(ahead)) == {"chunky"} and len(ahead.items) == 20


def test_a_short_request_runs_inside_a_long_pass_within_the_pause_bound() -> None:
    """The in-pause bound: a pause's pass fits in one stretch, and all of a pass's pauses
    together take at most as many tokens as the pass itself."""
    p = policy(preempt_ms=0.0)  # no time sizing: the pass is as long as the budget allows
    big = Req("big", 500, 40)
    submit(p, big)
    running = p.next_pass()
    assert running is not None and running.long
    nested_tokens = 0
    for pause in range(LAYERS - 1):
        submit(p, *one_texts(40, f"p{pause}-"))
        nested = p.in_pause(running)
        assert nested is not None and nested.nested
        assert "big" not in names(nested)
        assert nested.tokens <= running.per_pause
        nested_tokens += nested.tokens
        p.done(nested, 0.001)
    assert nested_tokens <= running.tokens
    assert running.allowance == running.tokens - nested_tokens >= 0


def test_no_pause_pass_for_a_long_newcomer() -> None:
    p = policy()
    submit(p, Req("big", 2000, 40))
    running = p.next_pass()
    assert running is not None
    # A long request arriving during the pass is not short: it waits its turn.
    submit(p, Req("other-big", 500, 40))
    assert p.in_pause(running) is None
    # A short one runs in the next pause.
    submit(p, *one_texts(1))
    nested = p.in_pause(running)
    assert nested is not None and names(nested) == ["one0"]


def test_bulk_work_is_not_starved_by_a_stream_of_interactive_requests() -> None:
    """Interactive requests go first, but bulk work left out of BULK_PATIENCE passes in a row
    goes first in the next one."""
    clock = Clock()
    p = policy(clock, tokens=400)  # 20 one-text requests fill a pass
    ingest = Req("ingest", 100, 20, bulk=True)
    submit(p, ingest)
    served_at = []
    for round_ in range(4 * (BULK_PATIENCE + 1)):
        submit(p, *one_texts(30, f"r{round_}-", arrived=clock.now))
        decided = p.next_pass()
        assert decided is not None
        if "ingest" in names(decided):
            served_at.append(round_)
        run(p, decided, clock)
    assert len(served_at) >= 4
    gaps = [b - a for a, b in zip(served_at, served_at[1:], strict=False)]
    assert served_at[0] <= BULK_PATIENCE and max(gaps) <= BULK_PATIENCE + 1


def test_a_request_waiting_for_its_next_slice_leaves_the_turns_until_it_comes() -> None:
    p = policy()
    big = Req("big", 600, 10).tokenise(256)
    p.add(big)
    first = p.next_pass()
    assert first is not None and not p.short(big)  # not fully tokenised: long
    while (decided := p.next_pass()) is not None:
        run(p, decided)
    assert big.scheduled == 256 and not big.queued
    p.add(big.tokenise(256))
    assert big.queued and p.next_pass() is not None


def test_queue_wait_is_reported_once_per_request_by_class() -> None:
    clock = Clock()
    p = policy(clock, preempt_ms=0.0)  # the long ones start in one pass
    submit(p, Req("ingest", 100, 20, bulk=True), Req("big", 30, 20), *one_texts(2))
    clock.now = 0.5
    shorts = p.next_pass()
    assert shorts is not None and shorts.waits == [("short", 0.5), ("short", 0.5)]
    p.done(shorts, 0.1)
    clock.now = 1.0
    longs = p.next_pass()
    assert longs is not None and sorted(longs.waits) == [("bulk", 1.0), ("long", 1.0)]
    run(p, longs, clock)
    following = p.next_pass()
    assert following is not None and following.waits == []  # each request counted once


def test_closed_requests_are_dropped() -> None:
    p = policy()
    gone, kept = one_texts(2)
    submit(p, gone, kept)
    gone.closed = True
    decided = p.next_pass()
    assert decided is not None and names(decided) == ["one1"]
    assert p.next_pass() is None and not p.waiting


def test_a_request_of_many_texts_is_sized_by_time_even_alone() -> None:
    """200 texts are a small share of a 100k-token budget but seconds of work: the pass is
    sized so that a short request arriving meanwhile waits one stretch, and may preempt it."""
    p = policy(tokens=100_000, rows=10_000)
    many = Req("many", 200, 26)
    submit(p, many)
    assert not p.short(many)
    decided = p.next_pass()
    assert decided is not None and decided.long
    assert decided.tokens <= 0.025 * LAYERS / SECONDS_PER_TOKEN
    submit(p, *one_texts(1))
    assert p.in_pause(decided) is not None


def test_a_quick_models_stretch_is_a_few_of_its_one_text_passes() -> None:
    """A one-text request waits about one stretch: for a model that answers one text in a few
    ms, a fixed 25 ms stretch would be several times its own latency, so the stretch shrinks
    to STRETCH_PER_SHORT_PASS one-text passes (and the long pass with it); a slower model
    keeps `preempt_ms`."""
    cost = PassCost()
    for n in (20, 400, 1000, 30, 800):
        cost.add(n, 0.003 + 0.0001 * n)  # a one-text pass (32 tokens): 6.2 ms
    p = PassPolicy(max_batch_tokens=8192, max_batch_size=128, preempt_seconds=0.025, cost=cost)
    p.segments = LAYERS
    assert p.stretch_seconds() == pytest.approx(STRETCH_PER_SHORT_PASS * 0.0062)
    submit(p, Req("big", 2000, 40))
    decided = p.next_pass()
    assert decided is not None and decided.long
    seconds = 0.003 + 0.0001 * decided.tokens
    assert seconds <= LAYERS * p.stretch_seconds() < LAYERS * 0.025
    assert decided.per_pause <= p.stretch_seconds() / 0.0001
    assert policy().stretch_seconds() == 0.025  # 2 ms + 0.5 ms a token: preempt_ms holds
