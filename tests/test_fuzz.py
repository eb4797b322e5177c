"""Schemathesis against a live daemon's own /openapi.json: every route, inputs generated from the
document (valid and invalid), seeded and bounded (a few hundred cases, well under two minutes).
No answer may be a 5xx, every status must be one the document declares, and every response must
match its declared content type and schema. `make soak` runs the long version (10,000 cases).

Run through schemathesis' own CLI (its pytest plugin does not support this pytest yet):
tests/stress.py.
"""

from __future__ import annotations

from pathlib import Path

from daemons import running
from stress import generated_cases, schemathesis


def test_every_route_answers_within_its_document(tmp_path: Path, minilm: Path) -> None:
    with running(tmp_path, minilm) as daemon:
        run = schemathesis(daemon.url, max_examples=6, seed=1, timeout=600)
        log = daemon.log_tail()
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert generated_cases(run.stdout) >= 300, run.stdout[-2000:]
    assert "Traceback" not in log, log
