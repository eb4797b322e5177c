"""Watched folders: time from a file's save to its chunks being searchable, with MiniLM
(issue 12: p95 at most 5 s).

A daemon (all-MiniLM-L6-v2 by default) watches a temporary folder that already holds a few
hundred notes. Each round saves a file (alternately a new file and an edit of an existing one)
of a few paragraphs carrying a token no other file has, then polls `POST /v1/search` (keyword
mode, so the token is found exactly when the file's new chunks are committed; chunks and their
vectors are written in one transaction) every 20 ms until the file is the answer. Latency is
save -> first answer, so it includes the debounce (LOCALRANK_WATCH_DEBOUNCE_MS, default
1000 ms: the longest a burst is gathered; a lone save waits only for 100 ms of quiet), the
read, chunking, embedding (bulk, behind interactive requests) and the write. Rounds are spaced
so each measures a lone save.

    python -m bench.watch_latency [--rounds 40] [--notes 300] [--polling]
Writes bench/results/watch_latency.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from bench.kit.daemon import Daemon
from bench.kit.measure import background_cpu, fmt, pct
from bench.kit.paths import RESULTS, minilm
from bench.kit.texts import mixed_texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--notes", type=int, default=300, help="files already in the folder")
    ap.add_argument("--polling", action="store_true", help="force the polling watcher")
    ap.add_argument("--model", default=None, help="model folder (default: all-MiniLM-L6-v2)")
    args = ap.parse_args()
    model = args.model or minilm()
    folder = Path(tempfile.mkdtemp(prefix="localrank-watch-bench-")).resolve()
    texts = mixed_texts(args.notes + args.rounds, min_words=150, max_words=400, seed=3)
    for i in range(args.notes):
        (folder / f"note{i:04d}.md").write_text(f"# Note {i}\n\n{texts[i]}\n")
    env = {"LOCALRANK_WATCH_POLLING": "always" if args.polling else "auto"}
    daemon = Daemon(model, extra=["--backend", "cpu"], env=env)
    daemon.start()
    latencies: list[float] = []
    try:
        started = time.perf_counter()
        daemon.call("POST", "/v1/watches", {"collection": "notes", "path": str(folder)})
        while True:
            (w,) = daemon.call("GET", "/v1/watches")["watches"]
            if w["state"] == "watching":
                break
            time.sleep(0.1)
        print(f"initial sync of {args.notes} files: {time.perf_counter() - started:.1f}s")
        cpu_before = background_cpu(0.5)
        for r in range(args.rounds):
            token = f"zqxtoken{r}qq"
            name = f"new{r:03d}.md" if r % 2 == 0 else f"note{r:04d}.md"
            body = texts[args.notes + r]
            path = folder / name
            saved = time.perf_counter()
            path.write_text(f"# Round {r}\n\n{body}\n\nThe marker is {token}.\n")
            while True:
                out = daemon.call(
                    "POST",
                    "/v1/search",
                    {"collection": "notes", "query": token, "mode": "keyword", "top_k": 1},
                )
                if out["results"] and out["results"][0]["document_id"] == path.as_posix():
                    break
                if time.perf_counter() - saved > 60:
                    raise RuntimeError(f"round {r}: not searchable after 60 s")
                time.sleep(0.02)
            latencies.append(time.perf_counter() - saved)
            time.sleep(0.3)
        cpu_after = background_cpu(0.5)
        (w,) = daemon.call("GET", "/v1/watches")["watches"]
    finally:
        daemon.stop()

    out = {
        "rounds": args.rounds,
        "files_in_folder": args.notes,
        "polling": args.polling,
        "latency_s": {
            "p50": pct(latencies, 50),
            "p95": pct(latencies, 95),
            "max": max(latencies),
            "all": latencies,
        },
        "target_p95_s": 5.0,
        "watch": {k: w[k] for k in ("indexed", "removed", "errors", "polling")},
        "other_cpu_load": [cpu_before, cpu_after],
    }
    RESULTS.mkdir(exist_ok=True)
    suffix = "_polling" if args.polling else ""
    (RESULTS / f"watch_latency{suffix}.json").write_text(json.dumps(out, indent=2))
    p95 = pct(latencies, 95)
    print(
        f"save -> searchable ({'polling' if args.polling else 'native events'}, MiniLM), "
        f"{args.rounds} saves of 150-400 words:\n"
        f"  p50 {fmt(pct(latencies, 50) * 1000, 0)} ms  p95 {fmt(p95 * 1000, 0)} ms  "
        f"max {fmt(max(latencies) * 1000, 0)} ms  (target p95 <= 5 s: "
        f"{'met' if p95 <= 5 else 'NOT met'})\n"
        f"  other CPU load on the machine: {cpu_before:.0%} before, {cpu_after:.0%} after"
    )
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
