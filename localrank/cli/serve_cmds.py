"""`localrank serve`: run the daemon in the foreground."""

from __future__ import annotations

import argparse

from localrank.cli.common import Runtime, add_model_flags, settings_from_args
from localrank.config import choices, describe_setting


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the daemon (127.0.0.1:8765 by default)")
    add_model_flags(p)
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int)
    p.add_argument("--unix-socket", dest="unix_socket", help="listen on a unix socket instead")
    p.add_argument("--log-format", dest="log_format", choices=choices("log_format"))
    p.add_argument("--log-level", dest="log_level", choices=choices("log_level"))
    p.add_argument(
        "--served-model-name",
        dest="served_model_names",
        action="append",
        metavar="NAME",
        help="another name the model answers to and lists (repeatable)",
    )
    p.add_argument(
        "--store-url",
        dest="store_url",
        metavar="URL",
        help="postgresql://user@host/db: collections in a PostgreSQL + pgvector database "
        "shared with other daemons (default: the SQLite file under the data directory)",
    )
    p.add_argument(
        "--reranker",
        metavar="MODEL",
        help="a cross-encoder (Qwen3-Reranker, BERT / XLM-R sequence classification) for every "
        "rerank route and search's rerank stage; loaded on first use",
    )
    p.add_argument(
        "--preload-reranker",
        dest="preload_reranker",
        action="store_true",
        default=None,
        help=describe_setting("preload_reranker"),
    )
    p.add_argument(
        "--reranker-idle-unload-s",
        dest="reranker_idle_unload_s",
        type=float,
        metavar="SECONDS",
        help=describe_setting("reranker_idle_unload_s"),
    )
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace, runtime: Runtime) -> int:
    # asyncio, aiohttp, the engine: imported only for this command (the CLI starts fast).
    import asyncio

    from localrank.logs import setup_logging
    from localrank.serve.run import serve

    settings = settings_from_args(
        args,
        "host",
        "port",
        "unix_socket",
        "log_format",
        "log_level",
        "served_model_names",
        "store_url",
        "reranker",
        "preload_reranker",
        "reranker_idle_unload_s",
    )
    setup_logging(settings)
    return asyncio.run(serve(settings))
