"""The background service: a LaunchAgent on macOS, a systemd --user unit on Linux.

Rendering is pure (settings in, file text out) so either platform's file can be produced and
checked on any machine. Installing runs launchctl/systemctl through an injectable
`CommandRunner`, so tests never touch the real service manager.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Literal
from xml.sax.saxutils import escape as xml_escape

import platformdirs

from localrank.config import Settings
from localrank.errors import ConfigError, LocalrankError

log = logging.getLogger(__name__)

Platform = Literal["macos", "linux"]
PLATFORMS: tuple[Platform, ...] = ("macos", "linux")
LAUNCHD_LABEL = "dev.localrank.daemon"
SYSTEMD_UNIT = "localrank.service"
# The templates live in launchd/ at the repository root; localrank/data links them so that a
# wheel carries them too.
TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "data"
# Settings that the rendered service receives (as flags or LOCALRANK_HOME); every other setting
# reaches the daemon only through config.toml, which the service reads at start.
_RENDERED = ("home", "host", "port", "model", "backend", "log_format")


def current_platform() -> Platform:
    """The service flavour of this machine, or ConfigError where neither exists."""
    if sys.platform == "darwin":
        return "macos"
    if sys.platform.startswith("linux"):
        return "linux"
    raise ConfigError(f"no background service support on {sys.platform}: run `localrank serve`")


def default_program() -> list[str]:
    """The argv prefix that runs this very installation of localrank (its venv included)."""
    return [sys.executable, "-m", "localrank"]


def log_files(settings: Settings) -> tuple[Path, Path]:
    """(stdout, stderr) log files of the service, under the user log directory."""
    logs = settings.paths.logs
    return logs / "localrank.out.log", logs / "localrank.err.log"


def serve_arguments(settings: Settings, program: Sequence[str] | None = None) -> list[str]:
    """The full command line the service runs: `localrank serve` with the configured flags."""
    argv = [
        *(program or default_program()),
        "serve",
        "--host",
        settings.host,
        "--port",
        str(settings.port),
    ]
    # Only a model the user chose becomes a flag: a flag counts as "named by the user", and a
    # named model never falls back to the offline model, while the default setting may.
    if not settings.model_is_default:
        argv += ["--model", settings.model]
    if settings.backend != "auto":
        argv += ["--backend", settings.backend]
    if settings.log_format != "text":
        argv += ["--log-format", settings.log_format]
    return argv


def _environment(settings: Settings) -> dict[str, str]:
    env = {"PYTHONUNBUFFERED": "1"}
    if settings.home is not None:
        env["LOCALRANK_HOME"] = str(settings.home)
    return env


def _reject_control_chars(value: str) -> str:
    # A newline would end a unit-file line or break the XML: refuse rather than mangle.
    if any(ord(c) < 32 for c in value):
        raise ConfigError(f"cannot put {value!r} in a service file: it has control characters")
    return value


def _template(name: str) -> Template:
    return Template((TEMPLATE_DIR / name).read_text(encoding="utf-8"))


def render_launchd(settings: Settings, program: Sequence[str] | None = None) -> str:
    """The LaunchAgent plist for `settings` (XML-escaped)."""

    def x(value: str) -> str:
        return xml_escape(_reject_control_chars(value))

    stdout, stderr = log_files(settings)
    args = "\n".join(f"        <string>{x(a)}</string>" for a in serve_arguments(settings, program))
    env = "\n".join(
        f"        <key>{x(k)}</key>\n        <string>{x(v)}</string>"
        for k, v in _environment(settings).items()
    )
    return _template("localrank.plist.template").substitute(
        label=LAUNCHD_LABEL,
        program_arguments=args,
        environment=env,
        working_directory=x(str(settings.paths.data)),
        stdout_path=x(str(stdout)),
        stderr_path=x(str(stderr)),
    )


def systemd_quote(arg: str, *, executable: bool = False) -> str:
    """Quote one ExecStart= word: specifiers (%) and variables ($) escaped, spaces quoted.

    systemd expands $VARS in the arguments only, not in the executable's path, so a '$' there
    must stay as it is (verified with systemd-analyze verify, systemd 252).
    """
    escaped = _reject_control_chars(arg).replace("%", "%%")
    if not executable:
        escaped = escaped.replace("$", "$$")
    if escaped and not any(c in escaped for c in " \"'\\;"):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _systemd_path(path: Path) -> str:
    # Path-valued settings take the rest of the line verbatim; only specifiers need escaping.
    return _reject_control_chars(str(path)).replace("%", "%%")


def render_systemd(settings: Settings, program: Sequence[str] | None = None) -> str:
    """The systemd --user unit for `settings` (systemd-quoted)."""
    stdout, stderr = log_files(settings)
    env_lines = []
    for key, value in _environment(settings).items():
        assignment = _reject_control_chars(f"{key}={value}").replace("%", "%%")
        quoted = assignment.replace("\\", "\\\\").replace('"', '\\"')
        env_lines.append(f'Environment="{quoted}"')
    return _template("localrank.service.template").substitute(
        exec_start=" ".join(
            systemd_quote(a, executable=i == 0)
            for i, a in enumerate(serve_arguments(settings, program))
        ),
        environment="\n".join(env_lines),
        working_directory=_systemd_path(settings.paths.data),
        stdout_path=_systemd_path(stdout),
        stderr_path=_systemd_path(stderr),
    )


def render(settings: Settings, platform: Platform, program: Sequence[str] | None = None) -> str:
    """The service file for `platform`, on any machine."""
    return (
        render_launchd(settings, program)
        if platform == "macos"
        else render_systemd(settings, program)
    )


def service_file(platform: Platform, user_home: Path | None = None) -> Path:
    """Where the service manager looks for our file."""
    home = user_home or Path.home()
    if platform == "macos":
        return home / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist"
    if user_home is None and sys.platform.startswith("linux"):
        # systemd searches $XDG_CONFIG_HOME/systemd/user; platformdirs resolves it the same way.
        return platformdirs.user_config_path() / "systemd" / "user" / SYSTEMD_UNIT
    return home / ".config" / "systemd" / "user" / SYSTEMD_UNIT


def unforwarded_settings(settings: Settings) -> list[str]:
    """Settings taken from LOCALRANK_* variables or flags that the service will NOT see.

    The service starts with the service manager's environment, not this shell's: only the values
    rendered into the file and config.toml reach it. (The token in particular is never written
    into a service file, which other local users may be able to read.)
    """
    return sorted(
        name
        for name, source in settings.sources.items()
        if name not in _RENDERED and not source.startswith(("default", "file:"))
    )


# --- running launchctl / systemctl ---------------------------------------------------------


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str = ""
    stderr: str = ""


CommandRunner = Callable[[Sequence[str]], CommandResult]


def run_command(argv: Sequence[str]) -> CommandResult:
    """The real runner: run a service-manager command and capture its output."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=60)
    except FileNotFoundError as exc:
        return CommandResult(127, "", f"{argv[0]}: not found ({exc})")
    return CommandResult(done.returncode, done.stdout, done.stderr)


@dataclass(frozen=True)
class Step:
    """One service-manager command. `check=False`: failing is normal (e.g. not loaded yet)."""

    argv: tuple[str, ...]
    check: bool = True


def _gui_domain(uid: int) -> str:
    return f"gui/{uid}"


def install_steps(platform: Platform, path: Path, uid: int) -> list[Step]:
    """Commands that (re)load the service file at `path` and start the service."""
    if platform == "macos":
        target = f"{_gui_domain(uid)}/{LAUNCHD_LABEL}"
        return [
            Step(("launchctl", "bootout", target), check=False),
            Step(("launchctl", "enable", target)),
            Step(("launchctl", "bootstrap", _gui_domain(uid), str(path))),
        ]
    return [
        Step(("systemctl", "--user", "daemon-reload")),
        Step(("systemctl", "--user", "enable", SYSTEMD_UNIT)),
        # restart, not start: a reinstall must pick up the new flags.
        Step(("systemctl", "--user", "restart", SYSTEMD_UNIT)),
    ]


def uninstall_steps(platform: Platform, uid: int) -> list[Step]:
    """Commands that stop the service and unload it (run before the file is removed)."""
    if platform == "macos":
        return [Step(("launchctl", "bootout", f"{_gui_domain(uid)}/{LAUNCHD_LABEL}"), check=False)]
    return [Step(("systemctl", "--user", "disable", "--now", SYSTEMD_UNIT), check=False)]


def status_step(platform: Platform, uid: int) -> Step:
    if platform == "macos":
        return Step(("launchctl", "print", f"{_gui_domain(uid)}/{LAUNCHD_LABEL}"), check=False)
    return Step(("systemctl", "--user", "status", "--no-pager", SYSTEMD_UNIT), check=False)


def run_steps(steps: Sequence[Step], runner: CommandRunner) -> list[CommandResult]:
    """Run the steps in order; a failing checked step raises with the tool's own message."""
    results = []
    for step in steps:
        result = runner(step.argv)
        results.append(result)
        if step.check and result.returncode != 0:
            message = (result.stderr or result.stdout).strip() or f"exit {result.returncode}"
            raise LocalrankError(f"`{' '.join(step.argv)}` failed: {message}")
    return results


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.chmod(0o644)
    tmp.replace(path)


def install(
    settings: Settings,
    platform: Platform,
    *,
    path: Path,
    runner: CommandRunner,
    uid: int,
    program: Sequence[str] | None = None,
) -> list[CommandResult]:
    """Write the service file to `path`, create the log/data dirs, and load and start it."""
    if not settings.binds_loopback and not settings.token:
        raise ConfigError(
            f"the service would bind {settings.host} without a token and refuse to "
            "start: set `token` in config.toml or bind 127.0.0.1"
        )
    settings.paths.ensure()  # launchd and systemd open the log files but create no folders
    _write_atomic(path, render(settings, platform, program))
    return run_steps(install_steps(platform, path, uid), runner)


def uninstall(platform: Platform, *, path: Path, runner: CommandRunner, uid: int) -> bool:
    """Stop and unload the service and delete its file. False when nothing was installed."""
    existed = path.exists()
    run_steps(uninstall_steps(platform, uid), runner)
    if existed:
        path.unlink()
    if platform == "linux":
        run_steps([Step(("systemctl", "--user", "daemon-reload"), check=False)], runner)
    return existed


@dataclass(frozen=True)
class UnitStatus:
    installed: bool
    running: bool
    path: Path
    manager_output: str


def status(platform: Platform, *, path: Path, runner: CommandRunner, uid: int) -> UnitStatus:
    """Whether the service file is installed and whether the service manager runs it."""
    result = run_steps([status_step(platform, uid)], runner)[0]
    output = (result.stdout + result.stderr).strip()
    if platform == "macos":
        running = result.returncode == 0 and "state = running" in result.stdout
    else:
        running = result.returncode == 0  # systemctl status: 0 active, 3 inactive, 4 unknown
    return UnitStatus(path.exists(), running, path, output)


def tail(path: Path, lines: int) -> list[str]:
    """The last `lines` lines of a (possibly large) text file, reading only its end."""
    if lines <= 0 or not path.exists():
        return []
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        end = f.tell()
        block, data = 65536, b""
        while end > 0 and data.count(b"\n") <= lines:
            start = max(0, end - block)
            f.seek(start)
            data = f.read(end - start) + data
            end = start
    return data.decode("utf-8", errors="replace").splitlines()[-lines:]
