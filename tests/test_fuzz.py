"""Schemathesis against a live daemon's own /openapi.json: every route, inputs generated from the
document (valid and invalid), seeded and bounded (a few hundred cases, well under two minutes).
No answer may be a 5xx, every status must be one the document declares, and every response must
match its declared content type and schema. `make soak` runs the long version (10,000 cases).

Run through schemathesis' own CLI (its pytest plugin does not support this pytest yet).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from daemons import running

CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_schema_conformance,response_headers_conformance"
)


def schemathesis(url: str, *, examples: int, seed: int) -> subprocess.CompletedProcess[str]:
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
            str(examples),
            "--workers",
            "1",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_every_route_answers_within_its_document(tmp_path: Path, minilm: Path) -> None:
    with running(tmp_path, minilm) as daemon:
        run = schemathesis(daemon.url, examples=6, seed=1)
        log = daemon.log_tail()
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    generated = re.search(r"(\d+) generated", run.stdout)
    assert generated and int(generated.group(1)) >= 300, run.stdout[-2000:]
    assert "Traceback" not in log, log
