"""Schemathesis against a live daemon's own /openapi.json: every route, inputs generated from the
document (valid and invalid), seeded and bounded (a few hundred cases, well under two minutes).
No answer may be a 5xx, every status must be one the document declares, and every response must
match its declared content type and schema. `make soak` runs the long version (10,000 cases).
With `--checks all`, the document and the checks must also agree: a request it allows is
accepted, one it forbids refused.

Run through schemathesis' own CLI (its pytest plugin does not support this pytest yet):
tests/stress.py. The daemon may index or watch one folder only (tests/schemathesis.toml:
LOCALRANK_FUZZ_FOLDER).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from daemons import running, write_notes
from stress import generated_cases, schemathesis


@pytest.fixture
def fuzz_folder(tmp_path: Path) -> Path:
    """The one folder the fuzzer may have the daemon index or watch (schemathesis.toml)."""
    folder = tmp_path / "fuzz-notes"
    write_notes(folder)
    return folder


def test_every_route_answers_within_its_document(
    tmp_path: Path, minilm: Path, fuzz_folder: Path
) -> None:
    with running(tmp_path / "home", minilm) as daemon:
        run = schemathesis(daemon.url, max_examples=6, seed=1, folder=fuzz_folder, timeout=600)
        log = daemon.log_tail()
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert generated_cases(run.stdout) >= 300, run.stdout[-2000:]
    assert "Traceback" not in log, log


def test_the_document_and_the_checks_agree(
    tmp_path: Path, minilm: Path, tiny_cross_encoder: Path, fuzz_folder: Path
) -> None:
    """Every check schemathesis has, a reranker configured (its routes take `method`
    cross-encoder then): 0 failures of any kind."""
    env = {"LOCALRANK_RERANKER": str(tiny_cross_encoder)}
    with running(tmp_path / "home", minilm, env=env) as daemon:
        run = schemathesis(
            daemon.url, max_examples=10, seed=7, folder=fuzz_folder, checks="all", timeout=900
        )
        log = daemon.log_tail()
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
    assert generated_cases(run.stdout) >= 1000, run.stdout[-2000:]
    assert "Traceback" not in log, log
