"""`make soak`: the daemon under sustained and hostile load, each figure next to its target.

  1. memory    10,000 POST /v1/embeddings of 1-400 random words, 8 concurrent, texts never
               repeated, after a warm-up; RSS growth at most 10%, with the embedding cache on and
               off (LOCALRANK_CACHE_SIZE=0). `--bench-model` adds the 0.6B-shape model over 2,000
               requests (models/build_test_models.py --bench).
  2. head-of-line  (headofline.py) a one-text request's p95 while (a) a 30 MB text, (b) one
               request of 2,000 texts x 2,000 words, (c) a sync ingest of a 9 MB document is in
               flight: at most 3x its p95 on the idle daemon; the daemon's RSS meanwhile at most
               2x its idle RSS plus the request body.
  3. burst     2,500 simultaneous requests, every one answered 200 or 429 with Retry-After within
               60 s; RSS 30 s later within 10% of before.
  4. connections  (connections.py) 1,100 idle connections against a daemon limited to 1,024 open
               files, a normal request answered within 1 s; slow-drip, silent and stalled-body
               connections closed within 30 s.
  5. fuzz      schemathesis over every route, ~10,000 cases: 0 5xx, 0 undocumented statuses or
               schema mismatches. The same count with --quick. It runs beside parts 1, 3 and 4
               (its figure is a count of failures, theirs are RSS and answers); head-of-line, a
               latency ratio, runs alone after it.

The memory, burst and fuzz drivers are tests/stress.py's, which the test suite runs in small
(tests/test_soak_subsets.py, tests/test_fuzz.py).

Each part starts its own daemon (`localrank serve`, a temporary LOCALRANK_HOME). The full run
takes about an hour on a 2-core CPU (10,000 requests of up to 400 words are ~3M tokens per
memory run); `--quick` (what `make soak` runs) gives every part a time budget so the whole run
stays under 10 minutes: the memory runs then stop at their deadline and report the growth the
measured slope projects over the full 10,000 requests. The last line says how long each part
took.

    python -m bench.soak --quick          # make soak
    python -m bench.soak                  # full counts
    python -m bench.soak --bench-model --only memory
    python -m bench.soak --only fuzz --max-examples 300
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench.kit.daemon import Daemon
from bench.kit.measure import fmt
from bench.kit.paths import minilm
from bench.soak.connections import connections_soak
from bench.soak.headofline import head_of_line
from models.build_test_models import bench_model
from tests.daemons import write_notes
from tests.stress import (
    Burst,
    MemoryRun,
    failures,
    generated_cases,
    memory_soak,
    overload_burst,
    raise_file_limit,
    schemathesis,
)

PARTS = ("memory", "hol", "burst", "connections", "fuzz")
TARGET_CASES = 10_000  # fuzz


@dataclass
class Target:
    """One line of the final table."""

    name: str
    figure: str
    passed: bool | None  # None: not measured


def target_line(t: Target) -> str:
    mark = {True: "PASS", False: "FAIL", None: "n/a "}[t.passed]
    return f"  [{mark}] {t.name}: {t.figure}"


def mib(x: float) -> str:
    return f"{fmt(x, 0)} MiB"


def ms(x: float) -> str:
    return f"{fmt(x, 1)} ms"


# --- the parts that drive a daemon through tests/stress.py ---------------------------------


def memory_part(
    model: str,
    *,
    label: str,
    env: dict[str, str],
    requests: int,
    warmup: int,
    concurrency: int,
    seconds: float,
    seed: int,
) -> MemoryRun:
    """tests/stress.py's memory soak on a daemon of its own."""
    daemon = Daemon(model, extra=["--backend", "cpu"], env=env)
    daemon.start()
    try:
        return memory_soak(
            daemon.base,
            daemon.pid,
            label=label,
            requests=requests,
            warmup=warmup,
            concurrency=concurrency,
            seconds=seconds,
            seed=seed,
        )
    finally:
        daemon.stop()


def burst_part(model: str, *, env: dict[str, str], requests: int, seed: int) -> Burst:
    """tests/stress.py's overload burst on a daemon of its own: `requests` at once, each answered
    within 60 s, the RSS 30 s later."""
    raise_file_limit(requests)  # before the daemon starts: it inherits the limit
    daemon = Daemon(model, extra=["--backend", "cpu"], env=env)
    daemon.start()
    try:
        return overload_burst(
            daemon.base, daemon.pid, requests=requests, deadline=60.0, settle=30.0, seed=seed
        )
    finally:
        daemon.stop()


@dataclass
class FuzzRun:
    cases: int
    failures: int  # distinct failures schemathesis reports (0 when it passed)
    passed: bool
    seconds: float
    report: str  # the tail of schemathesis' output, for a failure


def fuzz(model: str, *, max_examples: int, seed: int, timeout: float = 3600.0) -> FuzzRun:
    """Schemathesis with every check it has (`--checks all`: answers within the document, and
    the document and the checks agree) over every route of a daemon of its own; `max_examples`
    per operation and generation phase (270 gives ~10,600 cases over the routes this daemon
    has). The daemon may index or watch one small folder of notes only."""
    daemon = Daemon(model)
    daemon.start()
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="localrank-fuzz-") as tmp:
            folder = Path(tmp) / "notes"
            write_notes(folder)
            run = schemathesis(
                daemon.base,
                max_examples=max_examples,
                seed=seed,
                folder=folder,
                checks="all",
                timeout=timeout,
            )
    finally:
        daemon.stop()
    out = run.stdout + run.stderr
    return FuzzRun(
        cases=generated_cases(out),
        failures=failures(out) if run.returncode else 0,
        passed=run.returncode == 0,
        seconds=time.monotonic() - started,
        report=out[-4000:],
    )


# --- the run ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--model", help="model folder (default: all-MiniLM-L6-v2 from its wheel)")
    ap.add_argument("--quick", action="store_true", help="time budgets: under 10 minutes")
    ap.add_argument("--only", help=f"comma-separated parts to run ({', '.join(PARTS)})")
    ap.add_argument("--requests", type=int, default=10_000, help="memory: measured requests")
    ap.add_argument(
        "--warmup", type=int, help="memory: warm-up requests (default 1,000; quick 300)"
    )
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--memory-seconds", type=float, help="memory: budget per run")
    ap.add_argument("--bench-model", action="store_true", help="memory: add the 0.6B shape")
    ap.add_argument("--bench-requests", type=int, default=2_000)
    ap.add_argument("--window", type=float, help="head-of-line: seconds per big load")
    ap.add_argument("--loads", default="abc", help="head-of-line: which loads (default abc)")
    ap.add_argument("--burst", type=int, default=2_500, help="burst: simultaneous requests")
    ap.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for every daemon (repeatable; for experiments)",
    )
    ap.add_argument(
        "--max-examples", type=int, default=270, help="fuzz: per operation (270: ~10,600 cases)"
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    return ap.parse_args(argv)


def memory_targets(run: MemoryRun, limit: float = 0.10) -> Target:
    if run.complete:
        figure = f"{run.growth:+.1%} over {run.requests:,} requests"
        passed = run.growth <= limit
    else:
        figure = (
            f"{run.growth:+.1%} over {run.requests:,} requests in the time budget; the slope "
            f"({run.slope_per_1000:+.1f} MiB / 1,000) projects {run.projected_growth:+.1%} over "
            f"{run.target_requests:,}"
        )
        passed = run.projected_growth <= limit and run.growth <= limit
    figure += (
        f" (RSS {run.rss_warm:.0f} -> {run.rss_end:.0f} MiB, errors {run.errors}{run.kinds_text()})"
    )
    return Target(f"memory, {run.label}: RSS growth after warm-up <= 10%", figure, passed)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model = args.model or minilm()
    parts = set(args.only.split(",")) if args.only else set(PARTS)
    env = dict(kv.split("=", 1) for kv in args.env)
    quick = args.quick
    warmup = args.warmup if args.warmup is not None else (300 if quick else 1000)
    memory_seconds = args.memory_seconds or (150.0 if quick else 7200.0)
    window = args.window or (20.0 if quick else 60.0)
    targets: list[Target] = []
    t0 = time.monotonic()
    took: dict[str, float] = {}
    started = t0

    def part_done(name: str) -> None:
        nonlocal started
        now = time.monotonic()
        took[name] = now - started
        started = now

    # The fuzz's figures are failure counts, not latencies, and the parts before head-of-line
    # measure RSS and answers, not speed: it runs beside them on its own daemon (that is what
    # keeps `make soak` under 10 minutes on 2 cores). Head-of-line, a latency ratio, runs alone
    # after it.
    fuzzing: Future[FuzzRun] | None = None
    if "fuzz" in parts:
        print(f"\n[fuzz] schemathesis, --max-examples {args.max_examples}, in the background")
        fuzzing = ThreadPoolExecutor(1, thread_name_prefix="fuzz").submit(
            fuzz, model, max_examples=args.max_examples, seed=args.seed
        )

    if "memory" in parts:
        name = "MiniLM" if args.model is None else Path(model).name
        runs = [
            (f"{name}, cache on", model, env, args.requests),
            (f"{name}, cache off", model, {**env, "LOCALRANK_CACHE_SIZE": "0"}, args.requests),
        ]
        if args.bench_model:
            runs.append(("0.6B shape, cache on", str(bench_model()), env, args.bench_requests))
        for label, m, e, n in runs:
            print(f"\n[memory] {label}: {warmup} warm-up + {n:,} requests, 1-400 words", flush=True)
            run = memory_part(
                m,
                label=label,
                env=e,
                requests=n,
                warmup=warmup,
                concurrency=args.concurrency,
                seconds=memory_seconds,
                seed=args.seed,
            )
            targets.append(memory_targets(run))
        part_done("memory")

    if "burst" in parts:
        print(f"\n[burst] {args.burst:,} simultaneous requests", flush=True)
        burst = burst_part(model, env=env, requests=args.burst, seed=args.seed)
        targets.append(
            Target(
                f"burst: {args.burst:,} at once, each 200 or 429 + Retry-After within 60 s",
                f"{burst.statuses}, last after {burst.slowest_s:.1f}s",
                burst.answered_properly == burst.requests and burst.slowest_s <= 60,
            )
        )
        targets.append(
            Target(
                "burst: RSS 30 s later within 10% of before",
                f"{mib(burst.rss_before)} -> {mib(burst.rss_after)} ({burst.rss_change:+.1%}; "
                f"peak {mib(burst.rss_peak)})",
                abs(burst.rss_change) <= 0.10,
            )
        )
        part_done("burst")

    if "connections" in parts:
        print("\n[connections] 1,100 idle, 50 each slow-drip / silent / stalled", flush=True)
        for what, figure, ok in connections_soak(model, idle=1100, slow=50):
            targets.append(Target(f"connections: {what}", figure, ok))
        part_done("connections")

    if fuzzing is not None:
        run = fuzzing.result()
        targets.append(
            Target(
                f"fuzz: 0 5xx, 0 undocumented statuses or mismatches in {TARGET_CASES:,} cases",
                f"{run.cases:,} cases, {run.failures} failures, {run.seconds:.0f} s",
                run.passed and run.cases >= TARGET_CASES,
            )
        )
        if not run.passed:
            print(run.report, flush=True)
        took["fuzz (beside the parts before head-of-line)"] = run.seconds
        part_done("waiting for the fuzz")

    if "hol" in parts:
        print(f"\n[head-of-line] windows of {window:.0f}s", flush=True)
        hol = head_of_line(
            model,
            env=env,
            window=window,
            idle_seconds=10 if quick else 30,
            seed=args.seed,
            which=args.loads,
        )
        for load in hol.loads:
            p95, ratio = load.probe.p95, load.probe.p95 / load.idle.p95
            targets.append(
                Target(
                    f"head-of-line {load.name}: one-text p95 <= 3x idle",
                    f"{ms(p95)} vs idle {ms(load.idle.p95)} (just before and after) = "
                    f"{ratio:.1f}x ({len(load.probe.latencies)} requests, errors "
                    f"{load.probe.errors or 0})",
                    ratio <= 3.0 and not load.probe.errors,
                )
            )
            cap = 2 * hol.rss_idle + load.body_bytes / 2**20
            targets.append(
                Target(
                    f"head-of-line {load.name}: RSS <= 2x idle + body",
                    f"peak {mib(load.rss_peak)} vs {mib(cap)} (idle {mib(hol.rss_idle)})",
                    load.rss_peak <= cap,
                )
            )
            if load.drained_s == load.drained_s:
                targets.append(
                    Target(
                        f"head-of-line {load.name}: a disconnected client's work is dropped",
                        f"queue empty {load.drained_s:.1f}s after the client left",
                        load.drained_s < 10,
                    )
                )
        part_done("hol")

    parts_took = ", ".join(f"{name} {seconds:.0f}s" for name, seconds in took.items())
    print(f"\nTargets ({time.monotonic() - t0:.0f}s: {parts_took}):")
    for t in targets:
        print(target_line(t))
    failed = [t for t in targets if t.passed is False]
    return 1 if failed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
