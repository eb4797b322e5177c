"""The daemon under test: `localrank serve` as a process of its own, timed from launch (its cold
start) to /health 200, and stopped with SIGTERM."""

from __future__ import annotations

import http.client
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.kit.measure import rss_mb


def free_port() -> int:
    """A loopback port free right now (the daemon binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Daemon:
    """`localrank serve` on a free loopback port with its own temporary LOCALRANK_HOME, or with
    `home` (kept when it stops: a bench's prepared collections)."""

    def __init__(
        self,
        model: str,
        extra: list[str] | None = None,
        env: dict[str, str] | None = None,
        file_limit: int | None = None,
        home: Path | None = None,
    ) -> None:
        self.model = model
        self.extra = extra or []
        self.env = env or {}
        self.file_limit = file_limit  # RLIMIT_NOFILE (soft and hard) for the daemon
        self.port = 0
        self.keep_home = home
        self.home: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.launched = 0.0
        self.cold_start_s = float("nan")
        self.log_path: Path | None = None

    @staticmethod
    def command() -> list[str]:
        """The `localrank` script next to this interpreter, else `python -m localrank`."""
        script = Path(sys.executable).parent / "localrank"
        return [str(script)] if script.exists() else [sys.executable, "-m", "localrank"]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 180.0) -> float:
        """Launch and block until /health answers 200; returns launch -> healthy seconds."""
        self.port = free_port()
        self.home = self.keep_home or Path(tempfile.mkdtemp(prefix="localrank-bench-"))
        self.log_path = self.home / "serve.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALRANK_")}
        env["LOCALRANK_HOME"] = str(self.home)
        env.update(self.env)
        cmd = (
            self.command()
            + ["serve", "--model", self.model, "--host", "127.0.0.1", "--port", str(self.port)]
            + self.extra
        )
        with open(self.log_path, "wb") as log:
            self.launched = time.perf_counter()
            self.proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                stdin=subprocess.DEVNULL,
                preexec_fn=self._limit_files if self.file_limit else None,
            )
        deadline = self.launched + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"daemon exited with {self.proc.returncode} before healthy:\n" + self.log_tail()
                )
            if self._health() == 200:
                self.cold_start_s = time.perf_counter() - self.launched
                return self.cold_start_s
            time.sleep(0.02)
        self.stop()
        raise TimeoutError(f"daemon not healthy within {timeout:.0f}s:\n" + self.log_tail())

    def _limit_files(self) -> None:
        assert self.file_limit is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.file_limit, self.file_limit))

    def _health(self) -> int:
        return health_status(self.port)

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:] if self.log_path else ""
        except OSError:
            return ""

    def request(
        self, method: str, path: str, body: object = None, timeout: float = 60.0
    ) -> tuple[int, Any]:
        """One JSON request on a fresh connection: (status, the parsed answer)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            payload = json.dumps(body) if body is not None else None
            conn.request(method, path, payload, headers)
            r = conn.getresponse()
            return r.status, json.loads(r.read())
        finally:
            conn.close()

    def call(self, method: str, path: str, body: object = None, timeout: float = 60.0) -> Any:
        """request()'s answer; RuntimeError for a status of 300 or more."""
        status, out = self.request(method, path, body, timeout)
        if status >= 300:
            raise RuntimeError(f"{path}: {status} {out}")
        return out

    def rss(self) -> tuple[float, float]:
        """(current, peak) RSS of the daemon in MiB."""
        return rss_mb(self.pid)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, wait for the drain; SIGKILL only if it does not stop in time."""
        code = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                print(
                    f"  daemon pid {self.proc.pid} ignored SIGTERM for {timeout:.0f}s: killing",
                    file=sys.stderr,
                )
                self.proc.kill()
                code = self.proc.wait()
        elif self.proc is not None:
            code = self.proc.returncode
        if self.home is not None and self.keep_home is None:
            shutil.rmtree(self.home, ignore_errors=True)
        self.home = None
        return code


def health_status(port: int) -> int:
    """The status of `GET /health` on a local server, 0 when it does not answer (yet)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status
    except OSError:
        return 0
    finally:
        conn.close()
