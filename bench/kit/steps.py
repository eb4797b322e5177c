"""The drivers' steps (`make bench`, `make bench-default`): each benchmark a subprocess of its own,
with its own timeout, from the repository's root; a failed step is reported and the next still
runs. And reading back the CSVs the steps wrote."""

from __future__ import annotations

import csv
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.kit.measure import background_cpu
from bench.kit.paths import ROOT


def run_step(name: str, cmd: list[str], timeout: float, *, quiet: float = 0.0) -> dict[str, Any]:
    """Run `cmd` (after waiting up to `quiet` seconds for the CPUs to be idle, when given);
    {"step", "exit" (-1 on timeout), "seconds"}."""
    if quiet > 0:
        wait_quiet(quiet)
    print(f"\n{'=' * 100}\n[{name}] {' '.join(cmd)}\n{'=' * 100}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"[{name}] still running after {timeout:.0f}s: stopping it", flush=True)
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        code = -1
    secs = time.perf_counter() - t0
    print(f"[{name}] {'ok' if code == 0 else f'FAILED (exit {code})'} in {secs:.0f}s", flush=True)
    return {"step": name, "exit": code, "seconds": secs}


def wait_quiet(limit_s: float, threshold: float = 0.2) -> None:
    """On a shared machine, wait (at most `limit_s`) until other work leaves the CPUs idle."""
    deadline = time.monotonic() + limit_s
    while True:
        busy = background_cpu(2.0)
        if busy != busy:  # not measurable here (no /proc/stat): do not wait
            busy = 0.0
        if busy <= threshold:
            print(f"[wait-quiet] CPUs {100 * busy:.0f}% busy: starting", flush=True)
            return
        if time.monotonic() > deadline:
            print(
                f"[wait-quiet] CPUs still {100 * busy:.0f}% busy after {limit_s:.0f}s: "
                "starting anyway (figures will be noisy)",
                flush=True,
            )
            return
        print(f"[wait-quiet] CPUs {100 * busy:.0f}% busy with other work: waiting", flush=True)
        time.sleep(8)


def read_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV a step wrote; none when it is not there."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
