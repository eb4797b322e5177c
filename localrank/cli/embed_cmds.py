"""`localrank embed | rerank | pull | models`: the engine from the command line, in-process."""

from __future__ import annotations

import argparse
import logging
import sys

from localrank.cli.common import Runtime, add_model_flags, print_json, settings_from_args
from localrank.engine.load import load_engine
from localrank.engine.names import manifest
from localrank.engine.resolve import pull_model


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="embed texts and print the vectors")
    add_model_flags(p)
    p.add_argument("--query", action="store_true", help="embed as queries (with the instruction)")
    p.add_argument("--instruction", help="the task for queries (implies --query)")
    p.add_argument("--dimensions", type=int, help="Matryoshka size (32..native)")
    p.add_argument("--no-truncate", action="store_true", help="fail on inputs over max tokens")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("texts", nargs="+", metavar="TEXT")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("rerank", help="score documents against a query")
    add_model_flags(p)
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


def cmd_embed(args: argparse.Namespace, runtime: Runtime) -> int:
    _quiet_logging()
    engine = load_engine(settings_from_args(args))
    query = args.query or args.instruction is not None
    result = engine.embed(
        args.texts,
        query=query,
        instruction=args.instruction,
        dimensions=args.dimensions,
        truncate=not args.no_truncate,
    )
    info = engine.info
    if args.json:
        print_json(
            {
                "model": info.model_id,
                "backend": info.backend.backend,
                "device": info.backend.device,
                "dtype": info.backend.dtype,
                "dim": int(result.vectors.shape[1]),
                "pooling": info.backend.pooling,
                "fallback_reason": info.fallback_reason,
                "usage": {"prompt_tokens": result.prompt_tokens, "truncated": result.truncated},
                "embeddings": result.vectors.tolist(),
            }
        )
    else:
        print(
            f"# {info.model_id} on {info.backend.backend}/{info.backend.device} "
            f"{info.backend.dtype}, dim {result.vectors.shape[1]}",
            file=sys.stderr,
        )
        for text, vec in zip(args.texts, result.vectors, strict=True):
            head = " ".join(f"{x:+.4f}" for x in vec[:6])
            print(f"{text[:40]!r}: [{head} ...]")
    return 0


def cmd_rerank(args: argparse.Namespace, runtime: Runtime) -> int:
    _quiet_logging()
    engine = load_engine(settings_from_args(args))
    scores, _ = engine.rerank(args.query, args.documents, instruction=args.instruction)
    ranked = sorted(range(len(scores)), key=lambda i: -scores[i])
    if args.json:
        print_json(
            {
                "model": engine.info.model_id,
                "results": [
                    {"index": i, "score": float(scores[i]), "document": args.documents[i]}
                    for i in ranked
                ],
            }
        )
    else:
        for i in ranked:
            print(f"{scores[i]:.4f}  {args.documents[i]}")
    return 0


def cmd_pull(args: argparse.Namespace, runtime: Runtime) -> int:
    path = pull_model(args.model)
    print(path)
    return 0


def cmd_models(args: argparse.Namespace, runtime: Runtime) -> int:
    models = manifest()
    if args.json:
        print_json(models)
    else:
        for name, entry in models.items():
            print(
                f"{name:45} dim {entry['dim']:5}  max {entry['max_tokens']:6}  {entry['pooling']}"
            )
    return 0
