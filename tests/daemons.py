"""A real `localrank serve` process for tests that need the daemon exactly as users run it (real
clients, the CLI's daemon path, the MCP server, fuzzing): started on a free loopback port with
its own LOCALRANK_HOME and no hub (never a download), logging to a file, stopped with SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent  # where `localrank` is installed (the venv's bin)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def request(
    url: str, body: Any = None, *, method: str | None = None, timeout: float = 60
) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data else "GET"))
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode()


@dataclass
class LiveDaemon:
    """`localrank serve ARGS` for `model` (None: the default setting) under `home`."""

    home: Path
    port: int
    model: Path | None
    args: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def log(self) -> Path:
        return self.home / "daemon.log"

    @property
    def env(self) -> dict[str, str]:
        """The environment of a client configured for this daemon (as a user's shell is)."""
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("LOCALRANK_", "HF_")) and k != "NOTIFY_SOCKET"
        }
        env = {
            **base,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "NO_PROXY": "127.0.0.1,localhost",
            # No hub here: an empty cache, and never a download attempt.
            "HF_HOME": str(self.home / "hf"),
            "HF_HUB_OFFLINE": "1",
            "LOCALRANK_HOME": str(self.home),
            "LOCALRANK_PORT": str(self.port),
            **self.extra_env,
        }
        if self.model is not None:
            env.update({"LOCALRANK_MODEL": str(self.model), "LOCALRANK_BACKEND": "cpu"})
        # float32 unless a test asks: these daemons' vectors are compared with the recipe's
        # exactly, and "auto" picks bfloat16 on a CPU that has it (the precision tests force
        # their dtype).
        env.setdefault("LOCALRANK_DTYPE", "float32")
        return env

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def start(self, timeout: float = 180) -> LiveDaemon:
        self.home.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "localrank", "serve", *self.args],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                status, _ = request(f"{self.url}/health", timeout=2)
            except OSError:
                status = 0
            if status == 200:
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"daemon did not become healthy:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a counter's samples whose labels include `labels`."""
        status, text = request(f"{self.url}/metrics")
        assert status == 200
        total = 0.0
        for line in str(text).splitlines():
            if not line.startswith(name):
                continue
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def wait_job(self, job_id: str, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _, job = request(f"{self.url}/v1/jobs/{job_id}")
            if job["state"] in ("done", "failed"):
                return dict(job)
            time.sleep(0.1)
        raise AssertionError(f"job {job_id} did not finish")


@contextlib.contextmanager
def running(
    home: Path, model: Path | None, *args: str, env: dict[str, str] | None = None
) -> Iterator[LiveDaemon]:
    """A started daemon for the duration of a `with` block."""
    daemon = LiveDaemon(home, free_port(), model, args, extra_env=dict(env or {})).start()
    try:
        yield daemon
    finally:
        daemon.stop()


def write_notes(folder: Path) -> dict[str, str]:
    """A small notes folder with distinct topics (real semantics for MiniLM)."""
    files = {
        "bread.md": "# Bread\n\nSourdough bread needs flour, water, salt\nand a lively starter.\n"
        "Bake it in a hot oven.\n",
        "volcano.md": "# Volcanoes\n\nA volcano erupts molten lava and ash.\nMagma rises "
        "from the mantle.\n",
        "tides.md": "# Tides\n\nThe moon's gravity pulls the oceans,\nwhich makes the tides "
        "rise and fall twice a day.\n",
        "sub/python.md": "# Python\n\nUse a virtual environment for each project.\n"
        "pip installs packages into it.\n",
    }
    for rel, text in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return files
