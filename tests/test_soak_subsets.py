"""The fast subsets of `make soak` (bench/soak), run in `make test` against a live daemon with
the real all-MiniLM-L6-v2: the same drivers as the soak (tests/stress.py), smaller counts,
looser bounds. The full targets (10,000 requests within 10%, 2,500 at once) are measured by the
soak itself.

Fairness (head-of-line) is tested on the scheduler directly, tests/test_worker.py."""

from __future__ import annotations

from pathlib import Path

from daemons import running
from stress import memory_soak, overload_burst, raise_file_limit


def test_memory_stays_flat_over_a_few_hundred_requests(tmp_path: Path, minilm: Path) -> None:
    with running(tmp_path, minilm) as daemon:
        run = memory_soak(
            daemon.url,
            daemon.pid,
            label="subset",
            requests=300,
            warmup=100,
            concurrency=8,
            seconds=120.0,
            seed=3,
        )
    assert run.errors == 0
    assert run.requests >= 100  # enough measured requests for the bound to mean something
    # Before the fix this grew ~+330 MB per 1,000 requests (+30% over 300 from ~330 MB).
    assert run.growth <= 0.15, run.line()


def test_a_burst_is_answered_200_or_429_with_retry_after(tmp_path: Path, minilm: Path) -> None:
    raise_file_limit(300)  # before the daemon starts: it holds the burst's connections too
    # A small queue: some of the burst must be refused.
    with running(tmp_path, minilm, env={"LOCALRANK_QUEUE_SIZE": "32"}) as daemon:
        burst = overload_burst(
            daemon.url, daemon.pid, requests=300, deadline=60.0, settle=3.0, seed=3, warmup=20
        )
    assert burst.answered_properly == burst.requests, burst.statuses
    assert burst.slowest_s <= 60.0
    assert burst.statuses.get("200", 0) >= 32, burst.statuses  # the queue was full, not refused
    assert burst.statuses.get("429", 0) > 0, burst.statuses
