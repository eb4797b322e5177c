"""`make bench-quick`: the figures that regress silently, each against its target in
bench/targets.toml, in under 5 minutes on a 2-core machine.

  MiniLM     c1 p50 over in-process encode([text]); c16 and c64 one-text clients' texts/s over
             in-process encode at batch 32 (sentence-transformers in a worker process, re-measured
             right before each level); every text unique, so the daemon's cache never answers
  head-of-line  one-text requests' p95 while a 2,000-text request is in flight, over their p95 on
             the idle daemon (measured just before and after)
  0.6B shape one client's query p50 over in-process encode([query]); 16 one-query clients'
             queries/s over in-process encode at batch 32 (few texts)
  search     store-level hybrid search p95 at 100k chunks (bench/kit/search.py's corpus, built
             once under --cache-dir)

Each figure prints PASS or FAIL with its ratio to the target; the run exits 1 when a figure misses
its target by more than its noise band (a miss inside the band is printed, not fatal: the machine
may be shared). After each load level the daemon's /metrics say how full its passes were.

    python -m bench.quick
    python -m bench.quick --only minilm,search
    python -m bench.quick --passive-reference   # on a shared machine (see --help)
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.kit.daemon import Daemon
from bench.kit.measure import fmt, pct
from bench.kit.paths import BENCH_MODEL, ROOT, minilm
from bench.kit.search import ensure_db, warm_file
from bench.kit.texts import mixed_texts
from bench.load.loadgen import Client, LevelResult, TextPool, closed_loop
from bench.load.processes import Reference
from bench.soak.headofline import Load, idle_probe, many_long, with_probe
from localrank.collections.search import SearchRequest, run_search
from localrank.engine.load import OPENMP_SPIN_COUNT
from localrank.store import SQLiteStore
from tests.stress import Texts

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

TARGETS = ROOT / "bench" / "targets.toml"
PARTS = ("minilm", "headofline", "shape", "search")
WORKER = [sys.executable, "-m", "bench.load", "--reference-worker"]


@dataclass(frozen=True)
class Target:
    name: str
    what: str
    value: float
    compare: str  # "<=" or ">="
    noise: float
    unit: str


def load_targets(path: Path = TARGETS) -> dict[str, Target]:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    out = {}
    for name, t in data.items():
        if t["compare"] not in ("<=", ">="):
            raise ValueError(f"{path}: [{name}] compare must be <= or >=")
        out[name] = Target(
            name, t["what"], float(t["value"]), t["compare"], float(t["noise"]), t["unit"]
        )
    return out


@dataclass(frozen=True)
class Verdict:
    target: Target
    measured: float
    passed: bool
    within_noise: bool  # missed, by no more than the noise band

    @property
    def fatal(self) -> bool:
        return not self.passed and not self.within_noise

    @property
    def ratio(self) -> float:
        """Measured over target (for "<=" figures below 1 is good; for ">=" above 1)."""
        return self.measured / self.target.value if self.target.value else float("nan")

    def line(self) -> str:
        t = self.target
        word = "PASS" if self.passed else "FAIL (within noise)" if self.within_noise else "FAIL"
        return (
            f"{word:<19} {t.name:<34} {fmt(self.measured, 2):>8} {t.unit:<2} {t.compare} "
            f"{t.value:g} {t.unit} (noise {t.noise:g})  ratio {fmt(self.ratio, 2)}"
        )


def judge(target: Target, measured: float) -> Verdict:
    """A figure against its target; nan (not measured) fails beyond any band."""
    if measured != measured:
        return Verdict(target, measured, False, False)
    if target.compare == "<=":
        return Verdict(
            target, measured, measured <= target.value, measured <= target.value + target.noise
        )
    return Verdict(
        target, measured, measured >= target.value, measured >= target.value - target.noise
    )


# --- the daemon's own view: how full its passes were ---------------------------------------


def scrape(daemon: Daemon) -> dict[str, float]:
    """Unlabelled samples and histogram sums/counts from /metrics (labels kept in the key)."""
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "_bucket" not in line:
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def pass_summary(before: dict[str, float], after: dict[str, float], seconds: float) -> str:
    """What the daemon's passes were between two scrapes `seconds` apart."""

    def d(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    passes = d("localrank_batch_size_count")
    if not passes:
        return "no passes"
    parts = [
        f"{passes:.0f} passes, {d('localrank_batch_size_sum') / passes:.1f} rows a pass",
        f"the model busy {100 * d('localrank_batch_seconds_sum') / seconds:.0f}% of the time",
    ]
    fill = d("localrank_batch_fill_tokens_count")
    if fill:  # the metrics of the scheduling policy (issue 19)
        parts.append(f"token fill {d('localrank_batch_fill_tokens_sum') / fill:.2f}")
        parts.append(f"row fill {d('localrank_batch_fill_rows_sum') / fill:.2f}")
        parts.append(f"{d('localrank_passes_in_pauses_total'):.0f} inside pauses")
        for kind in ("short", "long", "bulk"):
            label = f'{{class="{kind}"}}'
            n = d("localrank_queue_wait_seconds_count" + label)
            if n:
                mean = d("localrank_queue_wait_seconds_sum" + label) / n
                parts.append(f"{kind} requests waited {1000 * mean:.0f} ms on average")
    return ", ".join(parts)


# --- the load parts ------------------------------------------------------------------------


def short_texts(n: int, seed: int) -> list[str]:
    """Unique 8-30-word texts (a serial number first: none repeats)."""
    return [f"{i} {t}" for i, t in enumerate(mixed_texts(n, min_words=8, max_words=30, seed=seed))]


def level(
    daemon: Daemon, client: Client, pool: TextPool, c: int, n: int, warmup: int
) -> LevelResult:
    """One closed-loop level of one-text requests, printed with what /metrics say of it."""
    before, t0 = scrape(daemon), time.perf_counter()
    r = asyncio.run(
        closed_loop(
            daemon.pid,
            client,
            pool,
            name=f"c{c}",
            concurrency=c,
            per_request=1,
            n_requests=n,
            max_seconds=40.0,
            warmup=warmup,
            timeout_s=120.0,
        )
    )
    summary = pass_summary(before, scrape(daemon), time.perf_counter() - t0)
    errs = f", errors {r.error_kinds}" if r.errors else ""
    print(
        f"  c{c}: {r.ok} requests, p50 {fmt(r.p50_ms)} ms, p95 {fmt(r.p95_ms)} ms, "
        f"{r.texts_per_s:.1f} texts/s{errs}; {summary}",
        flush=True,
    )
    return r


def with_reference(
    model: str,
    daemon: Daemon,
    client: Client,
    *,
    single: list[str],
    batched: list[str],
    levels: list[tuple[int, int, int]],
    pools: list[TextPool],
    query: bool,
) -> dict[str, float]:
    """c1 against encode([text]) p50, each other level against encode at batch 32 measured
    right before it. Returns {"c1_p50_over_ms": .., "c16_ratio": .., ...}."""
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "texts.json"
        spec.write_text(json.dumps({"single": single, "batched": batched, "query": query}))
        ref = Reference(WORKER, spec, model)
        try:
            for (c, n, warmup), pool in zip(levels, pools, strict=True):
                if c == 1:
                    got = ref.ask(f"single {len(single)}")
                    r = level(daemon, client, pool, c, n, warmup)
                    out["c1_p50_over_ms"] = r.p50_ms - got["single_p50_ms"]
                    print(
                        f"    in-process encode([text]) p50 {got['single_p50_ms']:.2f} ms",
                        flush=True,
                    )
                else:
                    got = ref.ask("batched 1")
                    r = level(daemon, client, pool, c, n, warmup)
                    out[f"c{c}_ratio"] = r.texts_per_s / got["batch32_texts_per_s"]
                    print(
                        f"    in-process batch 32: {got['batch32_texts_per_s']:.1f} texts/s",
                        flush=True,
                    )
        finally:
            ref.close()
    return out


def minilm_part(targets: dict[str, Target], daemon: Daemon) -> list[Verdict]:
    print("\n[minilm] all-MiniLM-L6-v2, one text a request, every text unique", flush=True)
    levels = [(1, 100, 10), (16, 480, 32), (64, 1600, 128)]
    texts = short_texts(sum(n + w for _, n, w in levels), seed=19)
    pools, at = [], 0
    for _, n, w in levels:
        pools.append(TextPool(texts[at : at + n + w]))
        at += n + w
    client = Client(daemon.base, "openai")
    got = with_reference(
        minilm(),
        daemon,
        client,
        single=pools[0].texts[10:110],
        batched=pools[2].texts[:512],
        levels=levels,
        pools=pools,
        query=False,
    )
    return [
        judge(targets["minilm_c1_p50_over_inprocess"], got["c1_p50_over_ms"]),
        judge(targets["minilm_c16_vs_inprocess"], got["c16_ratio"]),
        judge(targets["minilm_c64_vs_inprocess"], got["c64_ratio"]),
    ]


def headofline_part(targets: dict[str, Target], daemon: Daemon, window: float) -> list[Verdict]:
    print("\n[head-of-line] one-text requests beside 2,000 texts x 2,000 words", flush=True)
    texts = Texts(19)
    body, big = many_long(texts)
    load = Load("2,000 texts", len(body))

    async def run() -> None:
        await idle_probe(daemon, texts, 3.0, load.idle)
        await with_probe(daemon, texts, load, lambda s: big(s, daemon.base), window)
        await idle_probe(daemon, texts, 3.0, load.idle)

    before, t0 = scrape(daemon), time.perf_counter()
    asyncio.run(run())
    summary = pass_summary(before, scrape(daemon), time.perf_counter() - t0)
    p, i = load.probe, load.idle
    print(
        f"  beside it: {len(p.latencies)} answered, p50 {fmt(p.p50)} ms, p95 {fmt(p.p95)} ms, "
        f"errors {p.errors or 0}; idle: {len(i.latencies)}, p50 {fmt(i.p50)} ms, p95 "
        f"{fmt(i.p95)} ms; {load.outcome}; {summary}",
        flush=True,
    )
    ratio = p.p95 / i.p95 if p.latencies and i.latencies else float("nan")
    return [judge(targets["head_of_line"], ratio)]


def shape_part(targets: dict[str, Target], model: Path) -> list[Verdict]:
    print(f"\n[0.6B shape] {model}, one query a request", flush=True)
    missing = [targets["shape06b_query_p50_over_inprocess"], targets["shape06b_c16_vs_inprocess"]]
    if not (model / "config.json").exists():
        print("  not built: models/build_test_models.py --bench", flush=True)
        return [judge(t, float("nan")) for t in missing]
    levels = [(1, 20, 3), (16, 64, 16)]
    texts = short_texts(200, seed=6)
    queries = [" ".join(t.split()[:12]) for t in texts]
    pools = [TextPool(queries[:23]), TextPool(queries[23:103])]
    daemon = Daemon(str(model), extra=["--backend", "cpu"])
    try:
        print(f"  daemon healthy in {daemon.start(timeout=300):.1f}s; {served(daemon)}", flush=True)
        client = Client(daemon.base, "openai", input_type="query")
        got = with_reference(
            str(model),
            daemon,
            client,
            single=queries[3:23],
            batched=queries[103:167],
            levels=levels,
            pools=pools,
            query=True,
        )
    finally:
        daemon.stop()
    return [
        judge(missing[0], got["c1_p50_over_ms"]),
        judge(missing[1], got["c16_ratio"]),
    ]


def search_part(targets: dict[str, Target], cache: Path) -> list[Verdict]:
    print("\n[search] 100k chunks x 1024-d, store level, hybrid", flush=True)
    path = ensure_db(cache, 100_000)
    data = np.load(path.with_suffix(".npz"))
    queries, qlabels = data["queries"], data["qlabels"]
    warm_file(path)
    store = SQLiteStore(path)
    lat: list[float] = []
    try:
        coll = store.get_collection("bench")
        store.prepare_search()
        for round_ in range(2):  # the first round warms up
            for q, label in zip(queries, qlabels, strict=True):
                req = SearchRequest.from_json(
                    {"collection": "bench", "query": f"cluster{label} w1 w2", "top_k": 10}
                )
                t = time.perf_counter()
                run_search(store, coll, req, q, {})
                if round_:
                    lat.append((time.perf_counter() - t) * 1000)
    finally:
        store.close()
    print(f"  p50 {pct(lat, 50):.1f} ms, p95 {pct(lat, 95):.1f} ms (n={len(lat)})", flush=True)
    return [judge(targets["search_100k_p95"], pct(lat, 95))]


def served(daemon: Daemon) -> str:
    """The dtype the daemon chose and why (the in-process references run float32)."""
    health = daemon.call("GET", "/health")
    return f"dtype {health.get('dtype')} ({health.get('dtype_reason')})"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench.quick",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--only", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    ap.add_argument("--bench-model", default=str(BENCH_MODEL), help="the 0.6B shape's folder")
    ap.add_argument("--cache-dir", default="/tmp/localrank-bench", help="search corpus cache")
    ap.add_argument("--window", type=float, default=12.0, help="head-of-line seconds")
    ap.add_argument(
        "--minilm-dtype",
        default="auto",
        help="the MiniLM daemon's --dtype (auto: bfloat16 where the CPU has it natively, as "
        "users get; float32 to compare like with like against the float32 reference)",
    )
    ap.add_argument("--targets", default=str(TARGETS))
    ap.add_argument(
        "--passive-reference",
        action="store_true",
        help="the in-process reference's OpenMP threads spin only briefly, as the daemon's do "
        "(GOMP_SPINCOUNT, engine/load.py): on a shared machine, GNU's unbounded spinning made "
        "it 10-100x slower than on a quiet one",
    )
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        print(f"unknown part(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    targets = load_targets(Path(args.targets))
    if args.passive_reference:  # the reference worker inherits it; the daemon sets the same
        os.environ.setdefault("GOMP_SPINCOUNT", str(OPENMP_SPIN_COUNT))
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    started = time.perf_counter()
    verdicts: list[Verdict] = []
    if "minilm" in parts or "headofline" in parts:
        daemon = Daemon(minilm(), extra=["--backend", "cpu", "--dtype", args.minilm_dtype])
        try:
            print(f"MiniLM daemon healthy in {daemon.start():.1f}s; {served(daemon)}", flush=True)
            if "minilm" in parts:
                verdicts += minilm_part(targets, daemon)
            if "headofline" in parts:
                verdicts += headofline_part(targets, daemon, args.window)
        finally:
            daemon.stop()
    if "shape" in parts:
        verdicts += shape_part(targets, Path(args.bench_model))
    if "search" in parts:
        verdicts += search_part(targets, Path(args.cache_dir))
    print(f"\n[targets] bench/targets.toml, {time.perf_counter() - started:.0f}s in all")
    for v in verdicts:
        print("  " + v.line())
    fatal = [v.target.name for v in verdicts if v.fatal]
    if fatal:
        print(f"missed beyond the noise band: {', '.join(fatal)}")
    return 1 if fatal else 0


if __name__ == "__main__":
    sys.exit(main())
