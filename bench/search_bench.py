"""Search latency (p50/p95) and recall@10 against exact float search, at 10k / 100k / 1M chunks
of 1024-d clustered synthetic vectors, store level (no daemon, no model).

The corpus and what is measured are bench/kit/search.py's: per size, the database cached under
--cache-dir with its ground truth (built on first use, so a rerun only measures) and read once
first; `index_load_s` is the store's `prepare_search` (the daemon's startup), `first_ms` the first
search after it; then vector search at each --candidates, the full hybrid pipeline and vector
search with a filter, each with recall@10 against exact (filtered) search.

    python -m bench.search_bench --sizes 10k,100k,1m
Writes bench/results/search.csv.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from bench.kit.paths import RESULTS
from bench.kit.search import ensure_db, measure, parse_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="10k,100k", help="comma list, e.g. 10k,100k,1m")
    ap.add_argument("--candidates", default="100,200,400,1000")
    ap.add_argument("--cache-dir", default="/tmp/localrank-bench")
    ap.add_argument("--out", default=str(RESULTS / "search.csv"))
    args = ap.parse_args()
    cache = Path(args.cache_dir)
    all_rows = []
    for size in (parse_size(s) for s in args.sizes.split(",")):
        path = ensure_db(cache, size)
        rows = measure(path, size, [int(c) for c in args.candidates.split(",")])
        for r in rows:
            print(r, flush=True)
        all_rows.extend(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(all_rows[0]))
        w.writeheader()
        w.writerows(all_rows)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
