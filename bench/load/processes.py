"""The load bench's processes: the in-process reference (a sentence-transformers subprocess, the
worker side in bench/load/reference_worker.py) beside the daemon under test, both timed from
launch, which is their cold start."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.kit.daemon import Daemon
from bench.kit.paths import ROOT


class Reference:
    """The reference worker process (bench/load/reference_worker.py has the protocol).

    `worker` is the command that starts it, without its options: the load bench passes itself
    (`python -m bench.load --reference-worker`, run from the repository's root).
    `launch_to_ready_s` is measured from Popen, like the daemon's cold start (interpreter start
    included).
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
            cwd=ROOT,
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
