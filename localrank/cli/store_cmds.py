"""`localrank index | search | collections | jobs | compact | reindex | eval`, in-process.

These commands open the database directly (WAL: safe next to a running daemon) and embed with
an in-process model from `EMBEDDER_FACTORY` (the real engine; tests install a fake with
`set_embedder_factory`). If the embedder has `close()` / `aclose()` it is called at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import inspect
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from localrank.cli.common import add_model_flags, print_json, settings_from_args
from localrank.config import Settings
from localrank.documents import DocumentIn, check_text, content_hash
from localrank.engine.inprocess import embedder_factory
from localrank.errors import InvalidInput, LocalrankError, ModelError, NotFound
from localrank.evaluate import evaluate, index_dataset, load_beir
from localrank.ingest import AsyncEmbedder
from localrank.search import SearchRequest, SearchService
from localrank.store import Store
from localrank.store import documents as docs_db
from localrank.store import jobs as jobs_db
from localrank.store.maintenance import compact

EmbedderFactory = Callable[[Settings], AsyncEmbedder]
EMBEDDER_FACTORY: EmbedderFactory | None = embedder_factory

IGNORED_DIRS = {".git", "node_modules", ".venv", "venv", "__pycache__", ".mypy_cache",
                ".pytest_cache", ".ruff_cache", ".tox", ".hg", ".svn"}  # fmt: skip
DEFAULT_INCLUDE = ["*.md", "*.markdown", "*.txt", "*.rst", "*.org", "*.adoc"]


def set_embedder_factory(factory: EmbedderFactory | None) -> None:
    """Install the function that builds the in-process embedder (see the module docstring)."""
    global EMBEDDER_FACTORY
    EMBEDDER_FACTORY = factory


def _embedder(settings: Settings) -> AsyncEmbedder:
    if EMBEDDER_FACTORY is None:
        raise ModelError("no embedder factory is wired into localrank.cli.store_cmds")
    return EMBEDDER_FACTORY(settings)


async def _close(obj: object) -> None:
    for name in ("aclose", "close"):
        fn = getattr(obj, name, None)
        if callable(fn):
            result = fn()
            if inspect.isawaitable(result):
                await result
            return


def _open_store(settings: Settings) -> Store:
    return Store(settings.paths.database)


def _progress(done: int, total: int, label: str) -> None:
    if not sys.stderr.isatty() and done < total:
        return
    width = 30
    filled = int(width * done / total) if total else width
    sys.stderr.write(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    if done >= total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def iter_files(root: Path, include: list[str], exclude: list[str]) -> Iterator[Path]:
    """Files under root matching an include glob and no exclude glob, ignored dirs pruned."""
    if root.is_file():
        yield root
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in IGNORED_DIRS)
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if not any(fnmatch.fnmatch(name, g) or fnmatch.fnmatch(rel, g) for g in include):
                continue
            if any(fnmatch.fnmatch(name, g) or fnmatch.fnmatch(rel, g) for g in exclude):
                continue
            yield path


def _read_documents(
    root: Path, include: list[str], exclude: list[str]
) -> tuple[list[DocumentIn], list[str]]:
    docs, skipped = [], []
    base = root if root.is_dir() else root.parent
    for path in iter_files(root, include, exclude):
        doc_id = path.relative_to(base).as_posix()
        try:
            text = path.read_text(encoding="utf-8")
            check_text(doc_id, text, 10 * 1024 * 1024)
        except (OSError, UnicodeDecodeError, LocalrankError) as exc:
            skipped.append(f"{doc_id}: {getattr(exc, 'message', exc)}")
            continue
        docs.append(DocumentIn(doc_id, text, {"path": doc_id}, str(path.resolve())))
    return docs, skipped


async def _index(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    root = Path(args.path).expanduser()
    if not root.exists():
        raise NotFound(f"{root} does not exist")
    docs, skipped = _read_documents(root, args.include or DEFAULT_INCLUDE, args.exclude or [])
    embedder = _embedder(settings)
    store = await asyncio.to_thread(_open_store, settings)
    try:
        service = SearchService(store, lambda: embedder)
        names = {c["name"] for c in await service.list_collections()}
        if args.collection not in names:
            await service.create_collection(args.collection)
        coll = docs_db.get_collection(store.db.reader(), args.collection)
        known = docs_db.existing_documents(store.db.reader(), coll.id, [d.id for d in docs])
        changed = [d for d in docs if known.get(d.id, ("",))[0] != content_hash(d.text)]
        result: dict[str, Any] = {
            "collection": args.collection, "files": len(docs), "changed": len(changed),
            "unchanged": len(docs) - len(changed), "skipped": skipped, "job_id": None,
        }  # fmt: skip
        if not changed:
            return result
        job = await service.ingestor.submit(args.collection, changed)
        result["job_id"] = job.id
        if args.detach:
            return result
        claimed = await asyncio.to_thread(
            jobs_db.claim_job, store.db, service.runner.owner, only=job.id
        )
        show = None if args.json else (lambda j: _progress(j.done + j.failed, j.total, "index"))
        if claimed is not None:
            final = await service.ingestor.process_job(claimed, show)
        else:  # a daemon took it: follow its progress
            while (final := jobs_db.get_job(store.db.reader(), job.id)).state not in (
                "done",
                "failed",
            ):
                if show:
                    show(final)
                await asyncio.sleep(0.5)
        result.update(final.to_api())
        return result
    finally:
        await _close(embedder)
        store.close()


def cmd_index(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    out = asyncio.run(_index(args, settings))
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


async def _with_service(settings: Settings, fn: Callable[[SearchService], Any]) -> Any:
    embedder = _embedder(settings)
    store = await asyncio.to_thread(_open_store, settings)
    try:
        return await fn(SearchService(store, lambda: embedder))
    finally:
        await _close(embedder)
        store.close()


def cmd_search(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"collection": args.collection, "query": args.query,
                            "top_k": args.top_k, "mode": args.mode}  # fmt: skip
    if args.filter:
        try:
            body["filter"] = json.loads(args.filter)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"--filter is not JSON: {exc}") from exc
    if args.no_rerank:
        body["rerank"] = False
    req = SearchRequest.from_json(body)
    out = asyncio.run(_with_service(settings_from_args(args), lambda s: s.search(req)))
    if args.json:
        print_json(out)
        return 0
    for r in out["results"]:
        c = r["citation"]
        where = c["document_id"] if not c.get("source") else c["source"]
        snippet = " ".join(r["text"].split())[:160]
        print(f"{where}:{c['line_start']}-{c['line_end']}  score {r['score']:.4f}")
        print(f"    {snippet}")
    if not out["results"]:
        print("no results")
    return 0


def _store_only(args: argparse.Namespace, fn: Callable[[Store], Any]) -> Any:
    store = _open_store(settings_from_args(args))
    try:
        return fn(store)
    finally:
        store.close()


def cmd_collections(args: argparse.Namespace) -> int:
    rows = _store_only(args, lambda s: docs_db.list_collections(s.db.reader()))
    out = [c.to_api(documents=d, chunks=n) for c, d, n in rows]
    if args.json:
        print_json({"collections": out})
    else:
        for c in out:
            print(f"{c['name']}  {c['documents']} documents, {c['chunks']} chunks  {c['model']}")
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    jobs = _store_only(args, lambda s: jobs_db.list_jobs(s.db.reader(), limit=args.limit))
    out = [j.to_api() for j in jobs]
    if args.json:
        print_json({"jobs": out})
    else:
        for j in out:
            print(f"{j['job_id']}  {j['kind']:<7} {j['state']:<7} {j['collection']}  "
                  f"{j['done']}/{j['total']} done, {j['failed']} failed")  # fmt: skip
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    report = _store_only(args, lambda s: compact(s.db)).to_api()
    if args.json:
        print_json(report)
    else:
        print(f"compacted: {report['bytes_before']} -> {report['bytes_after']} bytes")
    return 0


def cmd_reindex(args: argparse.Namespace) -> int:
    async def run(service: SearchService) -> dict[str, Any]:
        job = await service.ingestor.submit_reindex(args.collection, force=args.force)
        claimed = jobs_db.claim_job(service.store.db, service.runner.owner, only=job.id)
        if claimed is None:
            return job.to_api()
        show = None if args.json else (lambda j: _progress(j.done, j.total, "reindex"))
        return (await service.ingestor.process_job(claimed, show)).to_api()

    out = asyncio.run(_with_service(settings_from_args(args), run))
    if args.json:
        print_json(out)
    else:
        print(f"reindex {out['job_id']}: {out['state']}")
    return 0 if out["state"] == "done" else 1


def cmd_eval(args: argparse.Namespace) -> int:
    dataset = load_beir(args.dataset)
    settings = settings_from_args(args)

    async def run() -> dict[str, Any]:
        embedder = _embedder(settings)
        # A throwaway database: evaluation never touches the user's collections.
        with tempfile.TemporaryDirectory(prefix="localrank-eval-") as tmp:
            store = await asyncio.to_thread(Store, Path(tmp) / "eval.db")
            try:
                service = SearchService(store, lambda: embedder)
                chunks = await index_dataset(service, dataset, "eval")
                metrics = await evaluate(service, dataset, "eval")
            finally:
                store.close()
                await _close(embedder)
        return {"dataset": dataset.name, "model": embedder.model_id, "documents":
                len(dataset.corpus), "queries": len(dataset.queries), "chunks": chunks,
                "metrics": metrics}  # fmt: skip

    out = asyncio.run(run())
    if args.json:
        print_json(out)
    else:
        print(f"{out['dataset']}: {out['documents']} docs, {out['queries']} queries, "
              f"model {out['model']}")  # fmt: skip
        print(f"{'config':<15}{'nDCG@10':>9}{'R@100':>9}{'MRR@10':>9}{'ms/q':>9}")
        for name, m in out["metrics"].items():
            print(f"{name:<15}{m['ndcg@10']:>9.4f}{m['recall@100']:>9.4f}"
                  f"{m['mrr@10']:>9.4f}{m['ms_per_query']:>9.2f}")  # fmt: skip
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the store commands to the `localrank` parser."""
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
