"""The two processes the load bench starts and stops: the daemon under test (`localrank serve`)
and the in-process reference (a sentence-transformers subprocess, see
bench/reference_worker.py). Both are timed from launch, which is their cold start."""

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

from bench.measure import rss_mb


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
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            conn.request("GET", "/health")
            return conn.getresponse().status
        except OSError:
            return 0
        finally:
            conn.close()

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:] if self.log_path else ""
        except OSError:
            return ""

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


class Reference:
    """The reference worker process (bench/reference_worker.py has the protocol).

    `worker` is the command that starts it, without its options: the entry script passes itself
    with `--reference-worker`. `launch_to_ready_s` is measured from Popen, like the daemon's
    cold start (interpreter start included).
    """

    def __init__(
        self,
        worker: list[str],
        texts_file: Path,
        model: str,
        *,
        cold_only: bool = False,
        timeout: float = 600.0,
    ) -> None:
        cmd = (
            worker
            + ["--model", model, "--texts-file", str(texts_file)]
            + (["--cold-only"] if cold_only else [])
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALRANK_")}
        self.timeout = timeout
        self.errlog = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.errlog,
            text=True,
            env=env,
        )
        line = self._line("READY ")
        self.cold = json.loads(line)
        self.cold["launch_to_ready_s"] = time.perf_counter() - t0
        if cold_only:
            self.close()

    def _line(self, prefix: str) -> str:
        """The next stdout line that starts with `prefix`, without it. If the worker dies or
        times out first, raise with the end of its stderr."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + self.timeout
        for line in self.proc.stdout:
            if line.startswith(prefix):
                return line[len(prefix) :]
            if time.monotonic() > deadline:
                break
        self.proc.kill()
        self.proc.wait()
        self.errlog.seek(0)
        err = self.errlog.read().decode(errors="replace")
        raise RuntimeError(f"reference worker failed (exit {self.proc.returncode}):\n{err[-3000:]}")

    def ask(self, command: str) -> dict[str, Any]:
        """Send one command ("single 300", "batched 2", ...) and return its RESULT."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        result = json.loads(self._line("RESULT "))
        time.sleep(0.3)  # let torch's worker threads go idle before the daemon is measured
        return result

    def close(self) -> None:
        """Ask the worker to quit; kill it if it has not within 30 s."""
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.errlog.close()


class Running:
    """The reference worker and the daemon that serve the measured run. Leaving the `with`
    block closes the worker and stops the daemon (printing its exit code), whatever happened."""

    def __init__(self) -> None:
        self.reference: Reference | None = None
        self.daemon: Daemon | None = None

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.reference is not None:
            self.reference.close()
        if self.daemon is not None:
            code = self.daemon.stop()
            print(f"\n  daemon stopped with SIGTERM (exit {code})", flush=True)


def cold_starts(
    running: Running,
    *,
    runs: int,
    model: str,
    daemon_env: dict[str, str],
    worker: list[str] | None,
    texts_file: Path,
) -> tuple[list[float], list[dict[str, Any]]]:
    """`runs` fresh launches of each process, the in-process reference and the daemon
    alternated; returns the daemon's launch -> healthy seconds and the reference's READY
    figures. The last pair stays up in `running` for the load. `worker` None: no reference."""
    print(
        f"\n[cold start] {runs} launch(es) each: daemon launch -> /health 200; "
        "in-process python -> import + load + first encode",
        flush=True,
    )
    daemon_cold: list[float] = []
    ref_cold: list[dict[str, Any]] = []
    for i in range(runs):
        last = i == runs - 1
        if worker is not None:
            rp = Reference(worker, texts_file, model, cold_only=not last)
            c = rp.cold
            ref_cold.append(c)
            if last:
                running.reference = rp
            print(
                f"  in-process {i + 1}: ready in {c['launch_to_ready_s']:.2f}s (import "
                f"{c['import_s']:.2f}s, load {c['load_s']:.2f}s, first encode "
                f"{c['first_encode_s']:.2f}s)",
                flush=True,
            )
        d = Daemon(model, env=daemon_env)
        if last:
            running.daemon = d  # stopped on leaving `running`, even if it fails to start
        try:
            daemon_cold.append(d.start())
        finally:
            if not last:
                d.stop()
        print(f"  daemon     {i + 1}: healthy in {daemon_cold[-1]:.2f}s", flush=True)
    return daemon_cold, ref_cold
