"""`localrank embed | rerank | pull | models`: the engine from the command line.

`embed` and `rerank` use the running daemon's model when one answers (nothing is loaded here),
and load the model in this process otherwise, with --local, or when a model flag names one.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from localrank.cli.common import (
    Runtime,
    add_local_flag,
    add_model_flags,
    daemon_for,
    print_json,
    settings_from_args,
)
from localrank.client import DaemonClient


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="embed texts and print the vectors")
    add_model_flags(p)
    add_local_flag(p)
    p.add_argument("--query", action="store_true", help="embed as queries (with the instruction)")
    p.add_argument("--instruction", help="the task for queries (implies --query)")
    p.add_argument("--dimensions", type=int, help="Matryoshka size (32..native)")
    p.add_argument("--no-truncate", action="store_true", help="fail on inputs over max tokens")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("texts", nargs="+", metavar="TEXT")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("rerank", help="score documents against a query")
    add_model_flags(p)
    add_local_flag(p)
    p.add_argument(
        "--reranker",
        metavar="MODEL",
        help="score with this cross-encoder, in this process (default: the daemon's reranker, "
        "or the embedding model's cosine when none is configured)",
    )
    p.add_argument("--instruction")
    p.add_argument("--json", action="store_true")
    p.add_argument("query")
    p.add_argument("documents", nargs="+", metavar="DOC")
    p.set_defaults(func=cmd_rerank)

    p = sub.add_parser("pull", help="download a model into the Hugging Face cache")
    p.add_argument("model")
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser("models", help="list known models")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)


def _quiet_logging() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="localrank: %(message)s")


def _daemon_embed(client: DaemonClient, args: argparse.Namespace, query: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"texts": args.texts, "truncate": not args.no_truncate}
    if query:
        body["input_type"] = "query"
    if args.instruction is not None:
        body["instruction"] = args.instruction
    if args.dimensions is not None:
        body["dimensions"] = args.dimensions
    out = client.embed(body)
    health = client.health
    return {
        "model": health.get("model_id", out["model_info"]["model_id"]),
        "backend": out["backend"],
        "device": out["device"],
        "dtype": out["model_info"]["dtype"],
        "dim": out["dim"],
        "pooling": out["model_info"]["pooling"],
        "fallback_reason": health.get("fallback_reason"),
        "usage": {
            "prompt_tokens": out["usage"]["prompt_tokens"],
            "truncated": out["usage"]["truncated_inputs"],
        },
        "embeddings": out["vectors"],
    }


def cmd_embed(args: argparse.Namespace, runtime: Runtime) -> int:
    _quiet_logging()
    settings = settings_from_args(args)
    query = args.query or args.instruction is not None
    client = daemon_for(args, runtime, settings)
    if client is not None:
        out = _daemon_embed(client, args, query)
    else:
        from localrank.cli import local

        out = local.embed(
            settings,
            args.texts,
            query=query,
            instruction=args.instruction,
            dimensions=args.dimensions,
            truncate=not args.no_truncate,
        )
    if args.json:
        print_json(out)
    else:
        print(
            f"# {out['model']} on {out['backend']}/{out['device']} {out['dtype']}, "
            f"dim {out['dim']}",
            file=sys.stderr,
        )
        for text, vec in zip(args.texts, out["embeddings"], strict=True):
            head = " ".join(f"{x:+.4f}" for x in vec[:6])
            print(f"{text[:40]!r}: [{head} ...]")
    return 0


def cmd_rerank(args: argparse.Namespace, runtime: Runtime) -> int:
    _quiet_logging()
    settings = settings_from_args(args, "reranker")
    client = None if args.reranker is not None else daemon_for(args, runtime, settings)
    if client is not None:
        body: dict[str, Any] = {"query": args.query, "documents": args.documents}
        if args.instruction is not None:
            body["instruction"] = args.instruction
        answer = client.rerank(body)
        out: dict[str, Any] = {
            "model": answer.get("model") or client.health.get("model_id"),
            "method": answer.get("method"),
            "results": [
                {"index": r["index"], "score": r["score"], "document": args.documents[r["index"]]}
                for r in answer["results"]
            ],
        }
    else:
        from localrank.cli import local

        out = local.rerank(settings, args.query, args.documents, args.instruction)
    if args.json:
        print_json(out)
    else:
        for r in out["results"]:
            print(f"{r['score']:.4f}  {r['document']}")
    return 0


def cmd_pull(args: argparse.Namespace, runtime: Runtime) -> int:
    from localrank.engine.resolve import pull_model

    path = pull_model(args.model)
    print(path)
    return 0


def cmd_models(args: argparse.Namespace, runtime: Runtime) -> int:
    from localrank.engine.names import manifest

    models = manifest()
    if args.json:
        print_json(models)
    else:
        for name, entry in models.items():
            print(
                f"{name:45} dim {entry['dim']:5}  max {entry['max_tokens']:6}  {entry['pooling']}"
            )
    return 0
