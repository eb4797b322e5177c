"""What every command shares: the runtime (seams for tests), common flags, Settings, output, and
the choice between the running daemon and this process.

The CLI's import graph stays light: `localrank search` against a running daemon must start in a
fraction of a second, so this module and the command modules import only the standard library,
`localrank.config` and the daemon client. The in-process implementations (`cli.local`: the
engine, numpy, torch, the store) and the daemon itself (`serve`: aiohttp) are imported inside
the functions that need them, and only when the command runs in-process.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from localrank.client import DaemonClient, find_daemon
from localrank.config import Settings, choices, load_settings

if TYPE_CHECKING:
    from localrank.collections.models import EmbeddingModel
    from localrank.serve.run import BackgroundDaemon

MODEL_FLAGS = ("model", "backend", "dtype", "max_tokens")


def _say(message: str) -> None:
    print(f"localrank: {message}", file=sys.stderr)


def default_find_daemon(settings: Settings) -> DaemonClient | None:
    """The configured daemon when it answers and serves this configuration's database."""
    return find_daemon(settings, on_wait=_say)


def default_start_daemon(settings: Settings) -> BackgroundDaemon:
    """Run the daemon in a thread of this process (what `localrank mcp` does when none runs)."""
    from localrank.serve.run import BackgroundDaemon  # aiohttp, the engine: only when needed

    return BackgroundDaemon(settings).start()


@dataclass(frozen=True)
class Runtime:
    """What commands take from outside their arguments. `main` builds the real one; tests pass
    their own: a fake embedder for plumbing tests, a daemon of their choosing (or none)."""

    # Loads the model for in-process work; None: the configured model (localrank.collections).
    embedder_factory: Callable[[Settings], EmbeddingModel] | None = None
    # The running daemon to talk to, or None to work in this process.
    find_daemon: Callable[[Settings], DaemonClient | None] = default_find_daemon
    # Starts a daemon inside this process (`localrank mcp` when none answers).
    start_daemon: Callable[[Settings], BackgroundDaemon] = default_start_daemon


Command = Callable[[argparse.Namespace, Runtime], int]


def add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model name, Hugging Face id or local folder")
    p.add_argument("--backend", choices=choices("backend"), help="backend (default: auto)")
    p.add_argument("--dtype", choices=choices("dtype"))
    p.add_argument("--max-tokens", type=int, dest="max_tokens")
    p.add_argument("--threads", type=int, help="CPU compute threads (default: physical cores)")


def add_local_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--local",
        action="store_true",
        help="work in this process even when a daemon is running (model flags imply it)",
    )


def settings_from_args(args: argparse.Namespace, *names: str) -> Settings:
    """Build Settings from the named flags only (flags > env > file > defaults)."""
    flags: dict[str, Any] = {}
    for name in ("model", "backend", "dtype", "max_tokens", "threads", "home", *names):
        if hasattr(args, name):
            flags[name] = getattr(args, name)
    return load_settings(flags)


def daemon_for(
    args: argparse.Namespace, runtime: Runtime, settings: Settings
) -> DaemonClient | None:
    """The running daemon this command should use, or None to run in this process: with
    --local, or when a model flag names a model of its own (the daemon serves its own), or
    when no daemon of this configuration answers."""
    if getattr(args, "local", False):
        return None
    if any(getattr(args, name, None) is not None for name in MODEL_FLAGS):
        return None
    return runtime.find_daemon(settings)


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")
