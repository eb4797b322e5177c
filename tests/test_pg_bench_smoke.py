"""Plumbing test for `python -m bench.pg_bench`: a tiny run (2,000 chunks, 3 documents ingested)
builds both stores, serves them through two live daemons, and writes pg.csv with every row. Not
a timed test: the figures come from `make bench`."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_pg_bench_quick_writes_csv(tmp_path: Path) -> None:
    out = tmp_path / "pg.csv"
    cmd = [
        sys.executable,
        "-m",
        "bench.pg_bench",
        "--chunks",
        "2000",
        "--ingest-docs",
        "3",
        "--rounds",
        "1",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = list(csv.DictReader(out.open()))
    search = [r for r in rows if r["p95_ms"]]
    assert {(r["store"], r["mode"]) for r in search} == {
        (store, mode)
        for store in ("postgres", "sqlite")
        for mode in ("vector", "hybrid", "vector+filter")
    }
    for r in search:
        assert float(r["p50_ms"]) > 0 and int(r["queries"]) == 100
        if r["mode"] == "vector" and r["candidates"] != "100":
            assert float(r["recall_at_10"]) >= 0.9, r
    ratios = {r["mode"]: float(r["ratio"]) for r in rows if r["ratio"]}
    assert len(ratios) == 2 and all(v > 0 for v in ratios.values())
    assert "targets: PostgreSQL vector recall@10" in proc.stdout
