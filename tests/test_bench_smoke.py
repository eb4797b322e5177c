"""Plumbing test for the load bench (`python -m bench.load`): a tiny run against a live daemon
writes sane CSVs.

Not a timed test: it checks that the load generator starts the daemon on MiniLM, drives both
request shapes, reads the daemon's RSS, stops it, and writes load.csv / coldstart.csv with the
expected columns and load_summary.json with the expected levels. The in-process reference and
the rate search are skipped to stay well under a minute on a busy 2-core machine.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_load_bench_quick_writes_csv(tmp_path: Path) -> None:
    out = tmp_path / "results"
    cmd = [
        sys.executable,
        "-m",
        "bench.load",
        "--quick",
        "--levels",
        "1,4",
        "--requests",
        "20",
        "--batch",
        "2x4",
        "--warmup",
        "2",
        "--duration",
        "60",
        "--skip-rate",
        "--skip-reference",
        "--coldstart-runs",
        "1",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=150, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    with open(out / "load.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        fields = reader.fieldnames or []
    for column in (
        "level",
        "concurrency",
        "texts_per_request",
        "requests",
        "ok",
        "errors",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "req_per_s",
        "texts_per_s",
        "rss_mb",
        "rss_peak_mb",
        "ref_single_p50_ms",
        "p50_vs_ref",
        "ref_texts_per_s",
        "throughput_vs_ref",
    ):
        assert column in fields, column
    assert [r["level"] for r in rows] == ["c1", "c4", "c2x4"]
    for r in rows:
        assert int(r["ok"]) == 20 and int(r["errors"]) == 0, r
        p50, p95, p99 = float(r["p50_ms"]), float(r["p95_ms"]), float(r["p99_ms"])
        assert 0 < p50 <= p95 <= p99 < 60_000, r
        assert float(r["req_per_s"]) > 0 and float(r["texts_per_s"]) > 0, r
        assert math.isclose(
            float(r["texts_per_s"]),
            float(r["req_per_s"]) * int(r["texts_per_request"]),
            rel_tol=0.01,
        )
        assert 50 < float(r["rss_mb"]) < 16_000, r  # MiB: the daemon's, read from /proc or ps

    with open(out / "coldstart.csv", newline="") as f:
        cold = list(csv.DictReader(f))
    daemon = [r for r in cold if r["kind"] == "daemon"]
    assert daemon and all(0 < float(r["launch_to_ready_s"]) < 150 for r in daemon)
    for png in ("latency.png", "throughput.png", "rss.png"):
        assert (out / png).stat().st_size > 1000, png
    assert "targets (issue 3)" in proc.stdout

    summary = json.loads((out / "load_summary.json").read_text())
    assert [lv["level"] for lv in summary["levels"]] == ["c1", "c4", "c2x4"]
    assert summary["reference"] == {} and summary["rate"]["probes"] == []  # both skipped
    assert 50 < summary["daemon_idle_rss_mb"] < 16_000
    assert len(summary["cold_start"]["daemon_runs_s"]) == 1
    assert any(t["target"].startswith("cold start") for t in summary["targets"])
