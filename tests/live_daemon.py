"""A real `localrank serve` subprocess on a free loopback port, for tests that need the daemon
exactly as users run it (real clients, fuzzing)."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

HEALTH_TIMEOUT = 90.0


@dataclass
class LiveDaemon:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def health(port: int) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/health")
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


@contextlib.contextmanager
def start_daemon(
    home: Path, *, model: Path | str, args: Sequence[str] = (), env: dict[str, str] | None = None
) -> Iterator[LiveDaemon]:
    """Start a daemon serving `model` with its state under `home`; wait until /health is 200;
    stop it with SIGTERM on the way out."""
    port = free_port()
    log = home / "daemon.log"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LOCALRANK_")}
    environ.update({"LOCALRANK_HOME": str(home), **(env or {})})
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "localrank",
                "serve",
                "--model",
                str(model),
                "--port",
                str(port),
                *args,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=environ,
        )
    daemon = LiveDaemon(process, port, log)
    try:
        deadline = time.monotonic() + HEALTH_TIMEOUT
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"daemon exited with {process.returncode}:\n{daemon.log_tail()}")
            with contextlib.suppress(OSError, ValueError):
                if health(port)[0] == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"daemon not healthy in {HEALTH_TIMEOUT} s:\n{daemon.log_tail()}"
                )
            time.sleep(0.1)
        yield daemon
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
