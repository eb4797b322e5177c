"""`localrank index | search | collections | jobs | compact | reindex | eval`.

Every command works through `CollectionService`: it opens the store (WAL: safe next to a running
daemon) and, when the command needs a model, the Runtime's embedder factory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from localrank.cli.common import Runtime, add_model_flags, print_json, settings_from_args
from localrank.collections import AsyncEmbedder, CollectionService, SearchRequest
from localrank.collections.evaluate import evaluate, index_dataset, load_beir
from localrank.collections.files import DEFAULT_INCLUDE
from localrank.config import Settings
from localrank.errors import InvalidInput, NotReady
from localrank.store import open_store
from localrank.store.records import Job

T = TypeVar("T")


def _no_model() -> AsyncEmbedder:
    raise NotReady("this command does not load a model")


@contextlib.asynccontextmanager
async def _service(
    settings: Settings, runtime: Runtime, *, model: bool, database: Path | None = None
) -> AsyncIterator[CollectionService]:
    """A CollectionService over the user's store (or `database`), with the model loaded only
    when the command needs one; both are closed on the way out."""
    embedder = runtime.embedder_factory(settings) if model else None
    store = await asyncio.to_thread(open_store, database or settings.paths.database)
    try:
        yield CollectionService(store, (lambda: embedder) if embedder else _no_model)
    finally:
        store.close()
        if embedder is not None:
            await asyncio.to_thread(embedder.close)


def _run(
    settings: Settings,
    runtime: Runtime,
    fn: Callable[[CollectionService], Awaitable[T]],
    *,
    model: bool,
) -> T:
    async def go() -> T:
        async with _service(settings, runtime, model=model) as service:
            return await fn(service)

    return asyncio.run(go())


def _progress_bar(label: str) -> Callable[[Job], None]:
    def show(job: Job) -> None:
        done, total = job.done + job.failed, job.total
        if not sys.stderr.isatty() and done < total:
            return
        width = 30
        filled = int(width * done / total) if total else width
        sys.stderr.write(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show


def cmd_index(args: argparse.Namespace, runtime: Runtime) -> int:
    progress = None if args.json else _progress_bar("index")
    out = _run(
        settings_from_args(args),
        runtime,
        lambda s: s.index_folder(
            Path(args.path).expanduser(),
            args.collection,
            include=args.include or DEFAULT_INCLUDE,
            exclude=args.exclude or (),
            wait=not args.detach,
            on_progress=progress,
        ),
        model=True,
    )
    if args.json:
        print_json(out)
    else:
        for s in out["skipped"]:
            print(f"skipped {s}", file=sys.stderr)
        print(
            f"{out['collection']}: {out['files']} files, {out['changed']} new or changed, "
            f"{out['unchanged']} unchanged"
            + (f", job {out['job_id']} {out.get('state', 'queued')}" if out["job_id"] else "")
        )
        for e in out.get("errors", []):
            print(f"  failed {e.get('id')}: {e.get('message')}", file=sys.stderr)
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
    req = SearchRequest.from_json(body)
    out = _run(
        settings_from_args(args), runtime, lambda s: s.search(req), model=req.needs_embedding
    )
    if args.json:
        print_json(out)
        return 0
    for r in out["results"]:
        c = r["citation"]
        where = c["source"] or c["document_id"]
        snippet = " ".join(r["text"].split())[:160]
        print(f"{where}:{c['line_start']}-{c['line_end']}  score {r['score']:.4f}")
        print(f"    {snippet}")
    if not out["results"]:
        print("no results")
    return 0


def cmd_collections(args: argparse.Namespace, runtime: Runtime) -> int:
    out = _run(settings_from_args(args), runtime, lambda s: s.list_collections(), model=False)
    if args.json:
        print_json({"collections": out})
    else:
        for c in out:
            print(f"{c['name']}  {c['documents']} documents, {c['chunks']} chunks  {c['model']}")
    return 0


def cmd_jobs(args: argparse.Namespace, runtime: Runtime) -> int:
    out = _run(
        settings_from_args(args), runtime, lambda s: s.list_jobs(limit=args.limit), model=False
    )
    if args.json:
        print_json({"jobs": out})
    else:
        for j in out:
            print(
                f"{j['job_id']}  {j['kind']:<7} {j['state']:<7} {j['collection']}  "
                f"{j['done']}/{j['total']} done, {j['failed']} failed"
            )
    return 0


def cmd_compact(args: argparse.Namespace, runtime: Runtime) -> int:
    report = _run(settings_from_args(args), runtime, lambda s: s.compact(), model=False)
    if args.json:
        print_json(report)
    else:
        print(f"compacted: {report['bytes_before']} -> {report['bytes_after']} bytes")
    return 0


def cmd_reindex(args: argparse.Namespace, runtime: Runtime) -> int:
    progress = None if args.json else _progress_bar("reindex")
    out = _run(
        settings_from_args(args),
        runtime,
        lambda s: s.reindex_here(args.collection, force=args.force, on_progress=progress),
        model=True,
    )
    if args.json:
        print_json(out)
    else:
        print(f"reindex {out['job_id']}: {out['state']}")
    return 0 if out["state"] == "done" else 1


def cmd_eval(args: argparse.Namespace, runtime: Runtime) -> int:
    dataset = load_beir(args.dataset)
    settings = settings_from_args(args)

    async def run() -> dict[str, Any]:
        # A throwaway database: evaluation never touches the user's collections.
        with tempfile.TemporaryDirectory(prefix="localrank-eval-") as tmp:
            async with _service(
                settings, runtime, model=True, database=Path(tmp) / "eval.db"
            ) as service:
                chunks = await index_dataset(service, dataset, "eval")
                metrics = await evaluate(service, dataset, "eval")
                model = service.embedder().model_id
        return {
            "dataset": dataset.name,
            "model": model,
            "documents": len(dataset.corpus),
            "queries": len(dataset.queries),
            "chunks": chunks,
            "metrics": metrics,
        }

    out = asyncio.run(run())
    if args.json:
        print_json(out)
    else:
        print(
            f"{out['dataset']}: {out['documents']} docs, {out['queries']} queries, "
            f"model {out['model']}"
        )
        print(f"{'config':<15}{'nDCG@10':>9}{'R@100':>9}{'MRR@10':>9}{'ms/q':>9}")
        for name, m in out["metrics"].items():
            print(
                f"{name:<15}{m['ndcg@10']:>9.4f}{m['recall@100']:>9.4f}"
                f"{m['mrr@10']:>9.4f}{m['ms_per_query']:>9.2f}"
            )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the collection commands to the `localrank` parser."""
    p = sub.add_parser("index", help="index a folder (or file) into a collection")
    p.add_argument("path")
    p.add_argument("--collection", "-c", required=True)
    p.add_argument("--include", action="append", help="glob to include (repeatable)")
    p.add_argument("--exclude", action="append", help="glob to exclude (repeatable)")
    p.add_argument("--detach", action="store_true", help="queue the job and return")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="search a collection")
    p.add_argument("query")
    p.add_argument("--collection", "-c", required=True)
    p.add_argument("--top-k", type=int, default=10, dest="top_k")
    p.add_argument("--mode", choices=("hybrid", "vector", "keyword"), default="hybrid")
    p.add_argument("--filter", help='metadata filter as JSON, e.g. \'{"path": "a.md"}\'')
    p.add_argument("--no-rerank", action="store_true", dest="no_rerank")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("collections", help="list collections")
    p.set_defaults(func=cmd_collections)
    p = sub.add_parser("jobs", help="list recent ingestion jobs")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=cmd_jobs)
    p = sub.add_parser("compact", help="reclaim space left by deletes")
    p.set_defaults(func=cmd_compact)

    p = sub.add_parser("reindex", help="re-embed a collection with the current model")
    p.add_argument("collection")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_reindex)

    p = sub.add_parser("eval", help="retrieval quality on a BEIR-format dataset folder")
    p.add_argument("dataset")
    p.set_defaults(func=cmd_eval)

    for name in ("index", "search", "collections", "jobs", "compact", "reindex", "eval"):
        parser = sub.choices[name]
        parser.add_argument("--json", action="store_true", help="machine-readable output")
        if name in ("index", "search", "reindex", "eval"):
            add_model_flags(parser)
