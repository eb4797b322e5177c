"""Plumbing test for `python -m bench.search_bench` (its corpus and measurement,
bench/kit/search.py, are what bench.search_e2e and bench.pg_bench build on): a 2k-chunk run
builds its database and ground truth, measures every mode and writes search.csv. Not a timed
test: the figures are only checked for being figures (recall in [0, 1], latencies positive)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_search_bench_small_run_writes_csv(tmp_path: Path) -> None:
    out = tmp_path / "search.csv"
    cmd = [
        sys.executable,
        "-m",
        "bench.search_bench",
        "--sizes",
        "2k",
        "--candidates",
        "50,2000",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["mode"], r["candidates"]) for r in rows] == [
        ("vector", "50"),
        ("vector", "2000"),
        ("hybrid", "400"),
        ("vector+filter", "400"),
    ]
    for r in rows:
        assert r["chunks"] == "2000"
        assert 0.0 <= float(r["recall_at_10"]) <= 1.0
        assert 0.0 < float(r["p50_ms"]) <= float(r["p95_ms"])
        assert float(r["first_ms"]) > 0.0 and float(r["index_load_s"]) >= 0.0
    # With every row a candidate, vector search is exact: recall 1.
    assert float(rows[1]["recall_at_10"]) == 1.0
    # The filtered ground truth is cached next to the database for the next run.
    assert list((tmp_path / "cache").glob("*.shard3.npz"))
