"""`localrank store migrate`: copy collections between stores without re-embedding."""

from __future__ import annotations

import argparse
import sys

from localrank.cli.common import Runtime, print_json
from localrank.config import redact_url


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("store", help="work on stores directly (migrate between them)")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    m = actions.add_parser(
        "migrate",
        help="copy collections from one store to another, vectors included (no re-embedding)",
        description="Copy collections (documents, chunks, vectors, watched folders) from one "
        "store to another, e.g. a laptop's SQLite file into a shared PostgreSQL database. "
        "Safe to run again: documents already copied are skipped by content hash.",
    )
    m.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="URL",
        help="sqlite:///path/to/localrank.db (or a file path) or postgresql://...",
    )
    m.add_argument("--to", dest="target", required=True, metavar="URL", help="the same forms")
    m.add_argument(
        "--collection", "-c", action="append", default=[], help="only this one (repeatable)"
    )
    m.add_argument("--json", action="store_true", help="print JSON")
    m.set_defaults(func=cmd_migrate)


def cmd_migrate(args: argparse.Namespace, runtime: Runtime) -> int:
    # The store (apsw, numpy; psycopg for PostgreSQL): only for this command.
    from localrank.collections.transfer import copy_collections, unfinished_jobs
    from localrank.store import open_store

    def say(name: str, done: int, total: int) -> None:
        print(f"\r{name}: {done}/{total} documents", end="", file=sys.stderr, flush=True)
        if done >= total:
            print(file=sys.stderr)

    source = open_store(args.source)
    try:
        target = open_store(args.target)
        try:
            pending = unfinished_jobs(source, args.collection)
            reports = copy_collections(source, target, args.collection, on_progress=say)
        finally:
            target.close()
    finally:
        source.close()
    body = {
        "from": redact_url(str(args.source)),
        "to": redact_url(str(args.target)),
        "collections": [r.to_api() for r in reports],
        "unfinished_jobs": pending,
    }
    if args.json:
        print_json(body)
        return 0
    for r in reports:
        how = "created" if r.created else "updated"
        print(f"{r.collection}: {r.documents} documents, {r.chunks} chunks ({how})")
    if pending:
        print(
            f"localrank: warning: {len(pending)} unfinished job(s) on the source were not "
            "copied: let them finish there, then migrate again",
            file=sys.stderr,
        )
    return 0
