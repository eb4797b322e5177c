"""Service files (launchd plist, systemd unit), install through a fake runner, and sd_notify."""

from __future__ import annotations

import os
import plistlib
import shlex
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from localrank.cli import main
from localrank.config import Settings, load_settings
from localrank.errors import ConfigError, LocalrankError
from localrank.ops import sd_notify, supervisor

PROGRAM = [sys.executable, "-m", "localrank"]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """LOCALRANK_HOME under tmp_path, and no other LOCALRANK_* variable from the caller."""
    for name in [n for n in os.environ if n.startswith("LOCALRANK_")]:
        monkeypatch.delenv(name)
    path = tmp_path / "lr home"
    monkeypatch.setenv("LOCALRANK_HOME", str(path))
    return path


def settings_for(home: Path, **flags: object) -> Settings:
    return load_settings(flags, {"LOCALRANK_HOME": str(home)})


# --- launchd ---------------------------------------------------------------------------------


def test_plist_parses_and_has_the_service_keys(home: Path) -> None:
    s = settings_for(home, port=9001, backend="cpu")
    plist = plistlib.loads(supervisor.render_launchd(s, PROGRAM).encode())
    assert plist["Label"] == supervisor.LAUNCHD_LABEL
    assert plist["ProgramArguments"] == [
        *PROGRAM,
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "9001",
        "--backend",
        "cpu",
    ]
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["ProcessType"] in ("Background", "Adaptive")
    assert plist["EnvironmentVariables"]["LOCALRANK_HOME"] == str(home)
    for key in ("StandardOutPath", "StandardErrorPath"):
        path = Path(plist[key])
        assert path.parent == s.paths.logs == home / "logs"
        assert not plist[key].startswith("/tmp/localrank")
    assert plist["StandardOutPath"] != plist["StandardErrorPath"]


def test_plist_escapes_xml_and_keeps_values_exact(home: Path) -> None:
    weird_home = home.parent / "a & b <c> 'd' \"e\""
    s = load_settings({"model": "org/m&<x>", "home": str(weird_home)}, {})
    plist = plistlib.loads(supervisor.render_launchd(s, PROGRAM).encode())
    assert plist["ProgramArguments"][-2:] == ["--model", "org/m&<x>"]
    assert plist["EnvironmentVariables"]["LOCALRANK_HOME"] == str(weird_home)
    assert plist["StandardOutPath"].startswith(str(weird_home))


def test_default_model_is_not_pinned_as_a_flag(home: Path) -> None:
    # A --model flag would count as "named by the user" and disable the offline fallback.
    argv = supervisor.serve_arguments(settings_for(home), PROGRAM)
    assert "--model" not in argv
    named = load_settings({}, {"LOCALRANK_HOME": str(home), "LOCALRANK_MODEL": "minilm"})
    assert supervisor.serve_arguments(named, PROGRAM)[-2:] == ["--model", "minilm"]
    assert (
        "LOCALRANK_HOME"
        not in plistlib.loads(supervisor.render_launchd(load_settings({}, {}), PROGRAM).encode())[
            "EnvironmentVariables"
        ]
    )


def test_control_characters_are_refused(home: Path) -> None:
    with pytest.raises(ConfigError, match="control characters"):
        supervisor.render_systemd(settings_for(home, model="a\nExecStartPre=/bin/evil"), PROGRAM)
    with pytest.raises(ConfigError, match="control characters"):
        supervisor.render_launchd(settings_for(home, model="a\x01b"), PROGRAM)


# --- systemd -------------------------------------------------------------------------------


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A small systemd unit parser: section -> key -> every value (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def exec_words(exec_start: str) -> list[str]:
    """Undo systemd quoting: double quotes with \\ escapes, then %% and $$ (not in argv[0])."""
    words = shlex.split(exec_start)
    return [
        w.replace("%%", "%") if i == 0 else w.replace("%%", "%").replace("$$", "$")
        for i, w in enumerate(words)
    ]


def test_systemd_unit_has_the_service_keys(home: Path) -> None:
    s = settings_for(home, port=9002)
    unit = parse_unit(supervisor.render_systemd(s, PROGRAM))
    svc = unit["Service"]
    assert svc["Type"] == ["notify"] and svc["NotifyAccess"] == ["main"]
    assert svc["Restart"] == ["on-failure"] and int(svc["RestartSec"][0]) > 0
    assert svc["TimeoutStopSec"] == ["15"] and svc["KillSignal"] == ["SIGTERM"]
    assert unit["Install"]["WantedBy"] == ["default.target"]
    assert exec_words(svc["ExecStart"][0]) == [
        *PROGRAM,
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "9002",
    ]
    assert f'"LOCALRANK_HOME={home}"' in svc["Environment"]
    for key in ("StandardOutput", "StandardError"):
        mode, _, path = svc[key][0].partition(":")
        assert mode == "append" and Path(path).parent == home / "logs"


def test_systemd_quoting_round_trips(home: Path) -> None:
    model = 'we "ird" m\\odel 100% $HOME;x'
    s = settings_for(home, model=model)
    program = ["/opt/my tools/py$thon%", "-m", "localrank"]
    svc = parse_unit(supervisor.render_systemd(s, program))["Service"]
    assert exec_words(svc["ExecStart"][0]) == [
        *program,
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "8765",
        "--model",
        model,
    ]
    assert supervisor.systemd_quote("plain") == "plain"
    assert supervisor.systemd_quote("50%") == "50%%"
    assert supervisor.systemd_quote("$X") == "$$X"
    assert supervisor.systemd_quote("/a b/$X", executable=True) == '"/a b/$X"'


def systemd_verify(unit: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}
    return subprocess.run(
        ["systemd-analyze", "verify", "--user", str(unit)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_systemd_unit_verifies(home: Path, tmp_path: Path) -> None:
    """`systemd-analyze verify` where it exists (CI installs it); the parsed keys elsewhere."""
    # The executable's path has a space: quoting must survive the real parser.
    bin_dir = tmp_path / "my bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    program = [str(bin_dir / "python"), "-m", "localrank"]
    unit = tmp_path / "localrank.service"
    unit.write_text(supervisor.render_systemd(settings_for(home, model="org/a b%c"), program))
    broken = tmp_path / "broken.service"
    broken.write_text(unit.read_text().replace("Type=notify", "Type=bogus"))

    if shutil.which("systemd-analyze"):
        good = systemd_verify(unit, tmp_path)
        assert good.returncode == 0, good.stderr
        assert good.stdout + good.stderr == ""  # verify reports unit problems as warnings
        bad = systemd_verify(broken, tmp_path)
        assert "bogus" in bad.stdout + bad.stderr  # the check above can fail
    else:
        assert parse_unit(unit.read_text())["Service"]["Type"] == ["notify"]
        assert parse_unit(broken.read_text())["Service"]["Type"] != ["notify"]


# --- install / uninstall / status through a fake runner ----------------------------------


class FakeRunner:
    def __init__(self, results: dict[str, supervisor.CommandResult] | None = None) -> None:
        self.calls: list[list[str]] = []
        self.results = results or {}

    def __call__(self, argv: Sequence[str]) -> supervisor.CommandResult:
        self.calls.append(list(argv))
        for prefix, result in self.results.items():
            if " ".join(argv).startswith(prefix):
                return result
        return supervisor.CommandResult(0, "", "")


def test_install_linux_writes_unit_and_starts_it(home: Path, tmp_path: Path) -> None:
    path = tmp_path / "units" / "localrank.service"
    runner = FakeRunner()
    s = settings_for(home)
    supervisor.install(s, "linux", path=path, runner=runner, uid=501, program=PROGRAM)
    assert parse_unit(path.read_text())["Service"]["Type"] == ["notify"]
    assert (path.stat().st_mode & 0o777) == 0o644
    assert s.paths.logs.is_dir() and s.paths.data.is_dir()
    assert runner.calls == [
        ["systemctl", "--user", "daemon-reload"],
        ["systemctl", "--user", "enable", "localrank.service"],
        ["systemctl", "--user", "restart", "localrank.service"],
    ]


def test_install_macos_reloads_the_agent(home: Path, tmp_path: Path) -> None:
    path = tmp_path / "LaunchAgents" / f"{supervisor.LAUNCHD_LABEL}.plist"
    # bootout fails when nothing is loaded yet: that is expected, not an error.
    runner = FakeRunner({"launchctl bootout": supervisor.CommandResult(113, "", "not loaded")})
    supervisor.install(
        settings_for(home), "macos", path=path, runner=runner, uid=501, program=PROGRAM
    )
    assert plistlib.loads(path.read_bytes())["Label"] == supervisor.LAUNCHD_LABEL
    target = f"gui/501/{supervisor.LAUNCHD_LABEL}"
    assert runner.calls == [
        ["launchctl", "bootout", target],
        ["launchctl", "enable", target],
        ["launchctl", "bootstrap", "gui/501", str(path)],
    ]


def test_install_reports_a_failing_command(home: Path, tmp_path: Path) -> None:
    runner = FakeRunner(
        {
            "systemctl --user restart": supervisor.CommandResult(
                1, "", "Job for localrank.service failed"
            )
        }
    )
    with pytest.raises(LocalrankError, match="Job for localrank.service failed"):
        supervisor.install(
            settings_for(home),
            "linux",
            path=tmp_path / "u.service",
            runner=runner,
            uid=1,
            program=PROGRAM,
        )


def test_install_refuses_a_network_bind_without_token(home: Path, tmp_path: Path) -> None:
    runner = FakeRunner()
    with pytest.raises(ConfigError, match="token"):
        supervisor.install(
            settings_for(home, host="0.0.0.0"),
            "linux",
            path=tmp_path / "u",
            runner=runner,
            uid=1,
            program=PROGRAM,
        )
    assert runner.calls == [] and not (tmp_path / "u").exists()


def test_uninstall_and_status(home: Path, tmp_path: Path) -> None:
    path = tmp_path / "localrank.service"
    path.write_text("[Service]\n")
    runner = FakeRunner()
    assert supervisor.uninstall("linux", path=path, runner=runner, uid=1) is True
    assert not path.exists()
    assert runner.calls[0] == ["systemctl", "--user", "disable", "--now", "localrank.service"]
    assert supervisor.uninstall("linux", path=path, runner=runner, uid=1) is False

    running = FakeRunner({"launchctl print": supervisor.CommandResult(0, "state = running\n", "")})
    st = supervisor.status("macos", path=path, runner=running, uid=7)
    assert st.running and not st.installed and "state = running" in st.manager_output
    stopped = FakeRunner({"systemctl": supervisor.CommandResult(3, "inactive (dead)", "")})
    assert not supervisor.status("linux", path=path, runner=stopped, uid=7).running


def test_unforwarded_settings_are_reported(home: Path) -> None:
    s = load_settings(
        {"port": 9000},
        {"LOCALRANK_HOME": str(home), "LOCALRANK_TOKEN": "t", "LOCALRANK_MAX_INPUTS": "10"},
    )
    assert supervisor.unforwarded_settings(s) == ["max_inputs", "token"]


def test_tail_reads_the_end_of_a_large_file(tmp_path: Path) -> None:
    log = tmp_path / "big.log"
    log.write_text("".join(f"line {i} " + "x" * 100 + "\n" for i in range(5000)))
    assert [line.split()[1] for line in supervisor.tail(log, 3)] == ["4997", "4998", "4999"]
    assert len(supervisor.tail(log, 2000)) == 2000
    assert supervisor.tail(tmp_path / "missing.log", 5) == []


# --- the CLI ---------------------------------------------------------------------------------


def run_cli(argv: list[str]) -> int:
    return main(argv)


def test_cli_dry_run_renders_either_platform(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["service", "install", "--dry-run", "--platform", "macos", "--port", "9100"]
    assert run_cli(argv) == 0
    out, err = capsys.readouterr()
    plist = plistlib.loads(out.encode())
    assert plist["ProgramArguments"][-4:] == ["--host", "127.0.0.1", "--port", "9100"]
    assert "would run: launchctl bootstrap" in err

    assert (
        run_cli(["service", "install", "--dry-run", "--platform", "linux", "--log-format", "json"])
        == 0
    )
    out, err = capsys.readouterr()
    svc = parse_unit(out)["Service"]
    assert exec_words(svc["ExecStart"][0])[-2:] == ["--log-format", "json"]
    assert "would run: systemctl --user enable localrank.service" in err
    assert not (home / "logs").exists()  # a dry run changes nothing


def test_cli_refuses_real_changes_for_another_platform(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = "macos" if supervisor.current_platform() == "linux" else "linux"
    assert run_cli(["service", "install", "--platform", other]) == 2
    assert "use --dry-run" in capsys.readouterr().err


def test_cli_logs_prints_the_tail(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["service", "logs"]) == 1  # nothing logged yet
    (home / "logs").mkdir(parents=True)
    (home / "logs" / "localrank.err.log").write_text("a\nb\nc\n")
    assert run_cli(["service", "logs", "-n", "2"]) == 0
    out = capsys.readouterr().out
    assert "b\nc" in out and "\na\n" not in out


# --- sd_notify -------------------------------------------------------------------------------


@pytest.fixture
def datagram(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(5)
    yield sock, str(path)
    sock.close()


def test_notify_ready_reaches_the_socket(
    datagram: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = datagram
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert sd_notify.notify_ready("serving on 127.0.0.1:8765") is True
    assert sock.recv(4096) == b"READY=1\nSTATUS=serving on 127.0.0.1:8765"
    assert sd_notify.notify_stopping() is True
    assert sock.recv(4096) == b"STOPPING=1"


def test_notify_abstract_namespace() -> None:
    name = f"localrank-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert sd_notify.notify_ready(address="@" + name) is True
        assert sock.recv(4096) == b"READY=1"


def test_notify_is_a_noop_without_systemd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sd_notify.systemd_notify_socket() is None
    assert sd_notify.notify_ready() is False
    assert sd_notify.systemd_notify_socket({"NOTIFY_SOCKET": "/run/x"}) == "/run/x"
    # A socket that went away is logged, not raised: the daemon serves without a supervisor.
    assert sd_notify.notify_ready(address=str(tmp_path / "gone.sock")) is False


def test_the_cli_spells_the_platforms_as_the_supervisor_does() -> None:
    from localrank.cli import ops_cmds
    from localrank.ops import supervisor

    assert ops_cmds.PLATFORMS == supervisor.PLATFORMS
