"""`localrank index | search | collections | jobs [retry] | watch | compact | reindex | eval`.

`search`, `index`, `collections`, `jobs` and `watch` reach the collections through the running
daemon when one of this configuration answers (its model is already loaded: nothing is loaded
here), and in this process otherwise or with --local: `cli.collections_access` picks one, once.
Both return the same documents, so the output is the same either way.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from localrank.cli.collections_access import collections_for
from localrank.cli.common import (
    Runtime,
    add_local_flag,
    add_model_flags,
    print_json,
    settings_from_args,
)
from localrank.errors import InvalidInput

INDEX_HELP = """\
Index a folder (or one file) into a collection, created if missing.

What is read by default fits both a notes folder and a code repository:
  notes: Markdown (.md .markdown .mdx), text (.txt .text), reStructuredText, Org, AsciiDoc,
         LaTeX, PDF (text per page; citations carry page numbers) and HTML (text only);
  code:  Python, JavaScript/TypeScript, Go, Rust, Java/Kotlin/Scala, Swift, C/C++/C#, Ruby,
         PHP, shell, SQL, and TOML/YAML/INI configuration, Dockerfile, Makefile;
  skipped: .gitignore'd and .ignore'd files (--no-ignore reads them), .git, node_modules,
         virtual environments and caches, lock files and minified bundles.
--include replaces the default globs, --exclude adds to the excluded ones. A file that cannot
be read (not UTF-8, too large, an encrypted or scanned PDF) is reported and skipped.

Each file's document id is its absolute path, so several folders can share a collection.
Unchanged files are skipped by content hash. With a running daemon the daemon does the work
(and the folder is read on its machine); --watch keeps the folder indexed from then on.
"""


def _progress_bar(label: str) -> Callable[[dict[str, Any]], None]:
    def show(job: dict[str, Any]) -> None:
        done, total = job["done"] + job["failed"], job["total"]
        if not sys.stderr.isatty() and done < total:
            return
        width = 30
        filled = int(width * done / total) if total else width
        sys.stderr.write(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show


def _folder_options(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"ignore_files": not args.no_ignore}
    if args.include:
        out["include"] = list(args.include)
    if args.exclude:
        out["exclude"] = list(args.exclude)
    return out


def cmd_index(args: argparse.Namespace, runtime: Runtime) -> int:
    settings = settings_from_args(args)
    collections = collections_for(args, runtime, settings)
    out = collections.index(
        Path(args.path).expanduser().absolute(),
        args.collection,
        _folder_options(args),
        prune=args.prune,
        watch=args.watch,
        wait=not args.detach,
        progress=None if args.json else _progress_bar("index"),
    )
    if args.json:
        print_json(out)
    else:
        for s in out["skipped"]:
            print(f"skipped {s}", file=sys.stderr)
        print(
            f"{out['collection']}: {out['files']} files, {out['changed']} new or changed, "
            f"{out['unchanged']} unchanged"
            + (f", {out['pruned']} removed" if out.get("pruned") else "")
            + (f", job {out['job_id']} {out.get('state', 'queued')}" if out["job_id"] else "")
        )
        for e in out.get("errors", []):
            print(f"  failed {e.get('id')}: {e.get('message')}", file=sys.stderr)
        if "watch" in out:
            w = out["watch"]
            where = "" if collections.daemon else " (the daemon watches it once it runs)"
            print(f"watching {w['path']} into {w['collection']} (watch {w['id']}){where}")
    return 1 if out.get("state") == "failed" else 0


def cmd_search(args: argparse.Namespace, runtime: Runtime) -> int:
    body: dict[str, Any] = {
        "collection": args.collection,
        "query": args.query,
        "top_k": args.top_k,
        "mode": args.mode,
    }
    if args.filter:
        try:
            body["filter"] = json.loads(args.filter)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"--filter is not JSON: {exc}") from exc
    if args.no_rerank:
        body["rerank"] = False
    settings = settings_from_args(args)
    out = collections_for(args, runtime, settings).search(body)
    if args.json:
        print_json(out)
        return 0
    for r in out["results"]:
        c = r["citation"]
        where = c["source"] or c["document_id"]
        page = f" p.{c['page']}" if c.get("page") else ""
        snippet = " ".join(r["text"].split())[:160]
        print(f"{where}:{c['line_start']}-{c['line_end']}{page}  score {r['score']:.4f}")
        print(f"    {snippet}")
    if not out["results"]:
        print("no results")
    return 0


def cmd_collections(args: argparse.Namespace, runtime: Runtime) -> int:
    out = collections_for(args, runtime, settings_from_args(args)).collections()
    if args.json:
        print_json({"collections": out})
    else:
        for c in out:
            print(f"{c['name']}  {c['documents']} documents, {c['chunks']} chunks  {c['model']}")
    return 0


def cmd_jobs(args: argparse.Namespace, runtime: Runtime) -> int:
    out = collections_for(args, runtime, settings_from_args(args)).jobs(args.limit)
    if args.json:
        print_json({"jobs": out})
    else:
        for j in out:
            print(
                f"{j['job_id']}  {j['kind']:<7} {j['state']:<7} {j['collection']}  "
                f"{j['done']}/{j['total']} done, {j['failed']} failed"
            )
    return 0


def cmd_jobs_retry(args: argparse.Namespace, runtime: Runtime) -> int:
    out = collections_for(args, runtime, settings_from_args(args)).retry_job(
        args.job_id,
        wait=not args.detach,
        progress=None if args.json else _progress_bar("retry"),
    )
    if args.json:
        print_json(out)
    else:
        print(
            f"{out['job_id']}: {out['state']}, {out['done']}/{out['total']} done, "
            f"{out['failed']} failed"
        )
        for e in out.get("errors", []):
            print(f"  failed {e.get('id') or 'job'}: {e.get('message')}", file=sys.stderr)
    return 1 if out["state"] == "failed" else 0


def cmd_watch_list(args: argparse.Namespace, runtime: Runtime) -> int:
    out = collections_for(args, runtime, settings_from_args(args)).watches()
    if args.json:
        print_json({"watches": out})
    else:
        for w in out:
            print(
                f"{w['id']}  {w['path']} -> {w['collection']}  {w.get('state', 'registered')}"
                + (f", {w['indexed']} indexed, {w['removed']} removed" if "indexed" in w else "")
                + (" (polling)" if w.get("polling") else "")
            )
            for e in w.get("errors", []):
                print(f"    {e}")
        if not out:
            print("no watched folders")
    return 0


def cmd_watch_remove(args: argparse.Namespace, runtime: Runtime) -> int:
    target: int | str = int(args.watch) if args.watch.isdigit() else args.watch
    out = collections_for(args, runtime, settings_from_args(args)).remove_watch(target)
    if args.json:
        print_json(out)
    else:
        for w in out["removed"]:
            print(f"stopped watching {w['path']} (watch {w['id']}, collection {w['collection']})")
    return 0


def cmd_compact(args: argparse.Namespace, runtime: Runtime) -> int:
    from localrank.cli import local

    report = local.compact(settings_from_args(args), runtime)
    if args.json:
        print_json(report)
    else:
        print(f"compacted: {report['bytes_before']} -> {report['bytes_after']} bytes")
    return 0


def cmd_reindex(args: argparse.Namespace, runtime: Runtime) -> int:
    from localrank.cli import local

    progress = None if args.json else _progress_bar("reindex")
    out = local.reindex(settings_from_args(args), runtime, args.collection, args.force, progress)
    if args.json:
        print_json(out)
    else:
        print(f"reindex {out['job_id']}: {out['state']}")
    return 0 if out["state"] == "done" else 1


def cmd_eval(args: argparse.Namespace, runtime: Runtime) -> int:
    from localrank.cli import local

    out = local.eval_dataset(settings_from_args(args, "reranker"), runtime, args.dataset)
    if args.json:
        print_json(out)
    else:
        print(
            f"{out['dataset']}: {out['documents']} docs, {out['queries']} queries, "
            f"model {out['model']}"
        )
        print(f"{'config':<21}{'nDCG@10':>9}{'R@100':>9}{'MRR@10':>9}{'ms/q':>9}")
        for name, m in out["metrics"].items():
            print(
                f"{name:<21}{m['ndcg@10']:>9.4f}{m['recall@100']:>9.4f}"
                f"{m['mrr@10']:>9.4f}{m['ms_per_query']:>9.2f}"
            )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the collection commands to the `localrank` parser."""
    p = sub.add_parser(
        "index",
        help="index a folder (or file) into a collection",
        description=INDEX_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("path")
    p.add_argument("--collection", "-c", required=True)
    p.add_argument("--include", action="append", help="glob to include (repeatable)")
    p.add_argument("--exclude", action="append", help="glob to exclude (repeatable)")
    p.add_argument(
        "--no-ignore",
        action="store_true",
        dest="no_ignore",
        help="read files that .gitignore / .ignore exclude",
    )
    p.add_argument("--prune", action="store_true", help="remove documents whose files are gone")
    p.add_argument(
        "--watch",
        action="store_true",
        help="keep the folder indexed: the daemon re-indexes changed files and removes deleted "
        "ones (remembered across restarts; `localrank watch list | remove`)",
    )
    p.add_argument("--detach", action="store_true", help="queue the job and return")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="search a collection")
    p.add_argument("query")
    p.add_argument("--collection", "-c", required=True)
    p.add_argument("--top-k", type=int, default=10, dest="top_k")
    p.add_argument("--mode", choices=("hybrid", "vector", "keyword"), default="hybrid")
    p.add_argument("--filter", help='metadata filter as JSON, e.g. \'{"format": "pdf"}\'')
    p.add_argument("--no-rerank", action="store_true", dest="no_rerank")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("collections", help="list collections")
    p.set_defaults(func=cmd_collections)
    p = sub.add_parser("jobs", help="list recent ingestion jobs; retry a failed one")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=cmd_jobs)
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    a = actions.add_parser(
        "retry",
        help="queue a failed job again: it resumes where it stopped (followed to its end "
        "unless --detach)",
    )
    a.add_argument("job_id", metavar="ID")
    a.add_argument("--detach", action="store_true", help="queue the job and return")
    a.add_argument("--json", action="store_true", help="machine-readable output")
    add_local_flag(a)
    add_model_flags(a)
    a.set_defaults(func=cmd_jobs_retry)

    p = sub.add_parser("watch", help="folders the daemon keeps indexed")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    a = actions.add_parser("list", help="watched folders and what each is doing")
    a.add_argument("--json", action="store_true", help="machine-readable output")
    add_local_flag(a)
    a.set_defaults(func=cmd_watch_list)
    a = actions.add_parser("remove", help="stop watching a folder (its documents stay)")
    a.add_argument("watch", help="a watch id (see `watch list`) or the folder's path")
    a.add_argument("--json", action="store_true", help="machine-readable output")
    add_local_flag(a)
    a.set_defaults(func=cmd_watch_remove)

    p = sub.add_parser("compact", help="reclaim space left by deletes")
    p.set_defaults(func=cmd_compact)

    p = sub.add_parser("reindex", help="re-embed a collection with the current model")
    p.add_argument("collection")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_reindex)

    p = sub.add_parser("eval", help="retrieval quality on a BEIR-format dataset folder")
    p.add_argument("dataset")
    p.add_argument(
        "--reranker", metavar="MODEL", help="add a hybrid + cross-encoder row with this reranker"
    )
    p.set_defaults(func=cmd_eval)

    for name in ("index", "search", "collections", "jobs", "compact", "reindex", "eval"):
        parser = sub.choices[name]
        parser.add_argument("--json", action="store_true", help="machine-readable output")
        if name in ("index", "search", "reindex", "eval"):
            add_model_flags(parser)
        if name in ("index", "search", "collections", "jobs"):
            add_local_flag(parser)
