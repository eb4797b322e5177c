"""`localrank search` from the command line with the daemon running: wall time from process start
to results printed, over a 10k-chunk collection (issue 12: p50 at most 0.5 s on this machine).

The daemon (MiniLM by default) is started on a free port with a temporary LOCALRANK_HOME and
filled with 10,000 one-chunk documents through its own API. Then each run launches a fresh
`localrank search QUERY --collection bench` process (as a user's shell does) and times it until
it exits. Two references are timed in the same loop, interleaved with the searches, so a busy
machine shows up in all three: `python -c pass` (interpreter start) and
`python -c "import localrank.cli"` (the CLI's own import cost). A few `--local` searches (model
loaded in the CLI process, as every search did before the CLI used the daemon) give the
contrast.

    python -m bench.cli_search [--runs 40] [--chunks 10000] [--model PATH]
Writes bench/results/cli_search.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time

from bench.kit.daemon import Daemon
from bench.kit.measure import background_cpu, fmt, pct, ratio
from bench.kit.paths import RESULTS, minilm
from bench.kit.texts import mixed_texts, words


def fill(daemon: Daemon, chunks: int) -> float:
    """10k one-chunk documents into collection `bench` (async jobs); returns seconds."""
    started = time.perf_counter()
    daemon.call("POST", "/v1/collections", {"name": "bench"}, timeout=600)
    texts = mixed_texts(chunks, min_words=20, max_words=60, seed=12)
    jobs = []
    for s in range(0, chunks, 1000):
        docs = [{"id": f"doc{i}", "text": texts[i]} for i in range(s, min(s + 1000, chunks))]
        body = {"documents": docs, "async": True}
        jobs.append(
            daemon.call("POST", "/v1/collections/bench/documents", body, timeout=600)["job_id"]
        )
    for job in jobs:
        while daemon.call("GET", f"/v1/jobs/{job}")["state"] not in ("done", "failed"):
            time.sleep(0.5)
    info = daemon.call("GET", "/v1/collections/bench")
    assert info["chunks"] == chunks, info
    return time.perf_counter() - started


def timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{argv} failed: {done.stderr[-2000:]}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--chunks", type=int, default=10_000)
    ap.add_argument("--local-runs", type=int, default=3)
    ap.add_argument("--model", default=None, help="model folder (default: all-MiniLM-L6-v2)")
    args = ap.parse_args()
    model = args.model or minilm()
    daemon = Daemon(model, extra=["--backend", "cpu"])
    daemon.start()
    try:
        fill_s = fill(daemon, args.chunks)
        print(f"filled {args.chunks} chunks in {fill_s:.1f}s")
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALRANK_")}
        env.update(
            LOCALRANK_HOME=str(daemon.home),
            LOCALRANK_PORT=str(daemon.port),
            LOCALRANK_MODEL=str(model),
            LOCALRANK_BACKEND="cpu",
        )
        cli = Daemon.command()
        rng = random.Random(5)
        vocabulary = words()
        # Warm the page cache and the daemon's first-query paths once.
        timed([*cli, "search", "warm up", "--collection", "bench"], env)
        search, bare, imports = [], [], []
        cpu_before = background_cpu(0.5)
        for _ in range(args.runs):
            query = " ".join(rng.choices(vocabulary, k=4))
            search.append(timed([*cli, "search", query, "--collection", "bench"], env))
            bare.append(timed([sys.executable, "-c", "pass"], env))
            imports.append(timed([sys.executable, "-c", "import localrank.cli"], env))
        cpu_after = background_cpu(0.5)
        local = [
            timed([*cli, "search", "local search", "--collection", "bench", "--local"], env)
            for _ in range(args.local_runs)
        ]
    finally:
        daemon.stop()

    out = {
        "chunks": args.chunks,
        "runs": args.runs,
        "search_s": {"p50": pct(search, 50), "p95": pct(search, 95), "max": max(search)},
        "python_pass_s": {"p50": pct(bare, 50), "p95": pct(bare, 95)},
        "import_cli_s": {"p50": pct(imports, 50), "p95": pct(imports, 95)},
        "search_over_python_start": ratio(pct(search, 50), pct(bare, 50)),
        "local_search_s": {"p50": pct(local, 50), "max": max(local) if local else None},
        "target_p50_s": 0.5,
        "other_cpu_load": [cpu_before, cpu_after],
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cli_search.json").write_text(json.dumps(out, indent=2))
    print(
        f"localrank search (daemon running, {args.chunks} chunks), {args.runs} runs:\n"
        f"  p50 {fmt(pct(search, 50) * 1000, 0)} ms  p95 {fmt(pct(search, 95) * 1000, 0)} ms"
        f"  (target p50 <= 500 ms: {'met' if pct(search, 50) <= 0.5 else 'NOT met'})\n"
        f"  python -c pass p50 {fmt(pct(bare, 50) * 1000, 0)} ms; import localrank.cli p50 "
        f"{fmt(pct(imports, 50) * 1000, 0)} ms; search / python start "
        f"{fmt(out['search_over_python_start'], 2)}x\n"
        f"  --local (model loaded in the CLI) p50 {fmt(pct(local, 50) * 1000, 0)} ms\n"
        f"  other CPU load on the machine: {cpu_before:.0%} before, {cpu_after:.0%} after"
    )


if __name__ == "__main__":
    main()
