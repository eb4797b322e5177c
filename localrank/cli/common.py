"""What every command shares: the runtime (seams for tests), common flags, Settings, output."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from localrank.collections.embedder import EmbedderFactory, in_process_embedder
from localrank.config import BACKENDS, Settings, load_settings


@dataclass(frozen=True)
class Runtime:
    """What commands take from outside their arguments. `main` builds the real one; tests pass
    their own (a fake embedder for plumbing tests, say)."""

    embedder_factory: EmbedderFactory = in_process_embedder


Command = Callable[[argparse.Namespace, Runtime], int]


def add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model name, Hugging Face id or local folder")
    p.add_argument("--backend", choices=BACKENDS, help="backend (default: auto)")
    p.add_argument("--dtype", choices=("auto", "float32", "float16", "bfloat16"))
    p.add_argument("--max-tokens", type=int, dest="max_tokens")
    p.add_argument("--threads", type=int, help="CPU compute threads (default: physical cores)")


def settings_from_args(args: argparse.Namespace, *names: str) -> Settings:
    """Build Settings from the named flags only (flags > env > file > defaults)."""
    flags: dict[str, Any] = {}
    for name in ("model", "backend", "dtype", "max_tokens", "threads", "home", *names):
        if hasattr(args, name):
            flags[name] = getattr(args, name)
    return load_settings(flags)


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")
