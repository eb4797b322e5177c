"""`localrank service ... | doctor | config`: running localrank as a background service."""

from __future__ import annotations

import argparse
import json
import os
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any

from localrank.cli.common import Runtime, print_json, settings_from_args
from localrank.config import Settings, choices, load_settings

if TYPE_CHECKING:
    from localrank.ops import supervisor

# supervisor.PLATFORMS, spelled out: the service helpers are imported only when a `service`
# command runs (they pull in subprocess and xml, whose import brings http.client and ssl).
PLATFORMS = ("macos", "linux")


def _sv() -> ModuleType:
    from localrank.ops import supervisor

    return supervisor


_SERVICE_SETTINGS = ("host", "port", "log_format")


def _add_setting_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model name, Hugging Face id or local folder")
    p.add_argument("--backend", choices=choices("backend"), help="backend (default: auto)")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (default 8765)")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `service`, `doctor` and `config` commands."""
    p = sub.add_parser("service", help="install or manage the background service")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    for name, func, text in (
        ("install", cmd_install, "install and start the service"),
        ("uninstall", cmd_uninstall, "stop and remove the service"),
        ("status", cmd_status, "is the service installed and running"),
        ("logs", cmd_logs, "print the end of the service's logs"),
    ):
        a = actions.add_parser(name, help=text)
        a.add_argument(
            "--platform",
            choices=PLATFORMS,
            help="macos (launchd) or linux (systemd --user); default: this machine",
        )
        a.add_argument(
            "--dry-run",
            action="store_true",
            help="print what would be written and run, change nothing",
        )
        if name == "install":
            _add_setting_flags(a)
            a.add_argument("--log-format", choices=("text", "json"), dest="log_format")
        if name == "logs":
            a.add_argument("-n", "--lines", type=int, default=50)
        a.set_defaults(func=func)

    p = sub.add_parser("doctor", help="check this machine and say how to fix what is missing")
    _add_setting_flags(p)
    p.add_argument("--store-url", dest="store_url", metavar="URL", help="check this store")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("config", help="print the effective settings and where each came from")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_config)


def _platform(args: argparse.Namespace) -> supervisor.Platform:
    platform: supervisor.Platform = args.platform or _sv().current_platform()
    return platform


def _check_local(args: argparse.Namespace, platform: supervisor.Platform) -> bool:
    """Real changes only for this machine's own service manager; rendering works anywhere."""
    if args.dry_run or platform == _sv().current_platform():
        return True
    print(
        f"localrank: error: this machine is not {platform}; use --dry-run to render the file",
        file=sys.stderr,
    )
    return False


def _print_steps(steps: list[supervisor.Step]) -> None:
    for step in steps:
        print("# would run: " + " ".join(step.argv), file=sys.stderr)


def cmd_install(args: argparse.Namespace, runtime: Runtime) -> int:
    settings = settings_from_args(args, *_SERVICE_SETTINGS)
    platform = _platform(args)
    if not _check_local(args, platform):
        return 2
    path = _sv().service_file(platform)
    for name in _sv().unforwarded_settings(settings):
        print(
            f"localrank: warning: {name} comes from {settings.sources[name]}; the service will "
            f"not see it: put it in {settings.paths.config_file} instead",
            file=sys.stderr,
        )
    if args.dry_run:
        sys.stdout.write(_sv().render(settings, platform))
        print(f"# would write: {path}", file=sys.stderr)
        _print_steps(_sv().install_steps(platform, path, os.getuid()))
        return 0
    _sv().install(settings, platform, path=path, runner=_sv().run_command, uid=os.getuid())
    stdout, stderr = _sv().log_files(settings)
    print(f"installed {path}\nlogs: {stdout}, {stderr}")
    return 0


def cmd_uninstall(args: argparse.Namespace, runtime: Runtime) -> int:
    platform = _platform(args)
    if not _check_local(args, platform):
        return 2
    path = _sv().service_file(platform)
    if args.dry_run:
        _print_steps(_sv().uninstall_steps(platform, os.getuid()))
        print(f"# would remove: {path}", file=sys.stderr)
        return 0
    existed = _sv().uninstall(platform, path=path, runner=_sv().run_command, uid=os.getuid())
    print(f"removed {path}" if existed else f"nothing installed at {path}")
    return 0


def cmd_status(args: argparse.Namespace, runtime: Runtime) -> int:
    platform = _platform(args)
    if not _check_local(args, platform):
        return 2
    path = _sv().service_file(platform)
    if args.dry_run:
        _print_steps([_sv().status_step(platform, os.getuid())])
        return 0
    st = _sv().status(platform, path=path, runner=_sv().run_command, uid=os.getuid())
    print(f"file: {path} ({'installed' if st.installed else 'not installed'})")
    print(f"running: {'yes' if st.running else 'no'}")
    if st.manager_output:
        print(st.manager_output)
    return 0 if st.running else 1


def cmd_logs(args: argparse.Namespace, runtime: Runtime) -> int:
    settings = settings_from_args(args)
    found = False
    for path in _sv().log_files(settings):
        if args.dry_run:
            print(f"# would print the end of {path}", file=sys.stderr)
            continue
        lines = _sv().tail(path, args.lines)
        found = found or path.exists()
        print(f"==> {path} <==")
        print("\n".join(lines) if lines else "(empty)" if path.exists() else "(no such file)")
    return 0 if found or args.dry_run else 1


def cmd_doctor(args: argparse.Namespace, runtime: Runtime) -> int:
    from localrank.ops import doctor  # probes the engine and the store: only for this command

    names = ("model", "backend", "host", "port", "store_url")
    flags = {name: getattr(args, name) for name in names}
    settings, config_check = doctor.load_for_doctor(flags)
    checks = doctor.run_checks(settings, config_check)
    if args.json:
        print_json({"ok": doctor.exit_status(checks) == 0, "checks": [c.to_dict() for c in checks]})
    else:
        print(doctor.format_text(checks))
    return doctor.exit_status(checks)


def config_rows(settings: Settings) -> list[dict[str, Any]]:
    """Each setting's effective value (token masked) and its source."""
    return [
        {"name": name, "value": value, "source": settings.sources.get(name, "default")}
        for name, value in settings.to_dict().items()
    ]


def cmd_config(args: argparse.Namespace, runtime: Runtime) -> int:
    settings = load_settings()
    rows = config_rows(settings)
    if args.json:
        print_json(
            {
                "config_file": str(settings.paths.config_file),
                "settings": {r["name"]: {"value": r["value"], "source": r["source"]} for r in rows},
            }
        )
        return 0
    print(
        f"# config file: {settings.paths.config_file}"
        f"{'' if settings.paths.config_file.is_file() else ' (absent)'}"
    )
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        print(f"{r['name']:<{width}}  {json.dumps(r['value']):<40}  {r['source']}")
    return 0
