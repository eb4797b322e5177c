"""The in-process reference: sentence-transformers on the same model and texts as the daemon, run
inside a fresh subprocess (`python -m bench.load --reference-worker`, driven by
`bench.load.processes.Reference`) so the load generator itself never holds torch.

The protocol, one line each way:
  start        import + load + first encode, then print "READY <json>" (the cold start)
  single N     encode([text]) latency over the first N single texts
  batched R    encode(texts, batch_size=64) throughput (median of R), and 32-text batches
  engine N     localrank's engine in-process, embed([text]) latency (no HTTP, no queue)
  quit
Every answer is one "RESULT <json>" line on stdout, with the worker's RSS. The process stays
loaded between commands, so the parent can re-measure the reference right before each load
level (a shared machine's background load drifts within a run).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.kit.measure import pct, rss_mb

Encode = Callable[[list[str], int], None]  # (texts, batch size): encode and discard


def reference_worker(model: str, texts_file: Path, *, cold_only: bool) -> None:
    """Import + load + first encode (printed as READY <json>), then answer commands on stdin."""
    t0 = time.perf_counter()
    from sentence_transformers import SentenceTransformer

    t1 = time.perf_counter()
    st = SentenceTransformer(model, device="cpu")
    t2 = time.perf_counter()
    spec = json.loads(texts_file.read_text())
    single, batched = spec["single"], spec["batched"]
    # Queries: the model's own query prompt (config_sentence_transformers.json), as the daemon
    # prepends its instruction for input_type "query".
    prompt = {"prompt_name": "query"} if spec.get("query") else {}

    def enc(texts: list[str], bs: int = 32) -> None:
        st.encode(
            texts, batch_size=bs, normalize_embeddings=True, show_progress_bar=False, **prompt
        )

    enc([single[0]])
    t3 = time.perf_counter()
    dtype = str(next(st.parameters()).dtype).removeprefix("torch.")
    print(
        "READY "
        + json.dumps(
            {"import_s": t1 - t0, "load_s": t2 - t1, "first_encode_s": t3 - t2, "dtype": dtype}
        ),
        flush=True,
    )
    if cold_only:
        return
    for text in single[:10]:  # warm-up
        enc([text])
    enc(batched[:64], 64)
    answer_commands(enc, model, single, batched, query=bool(spec.get("query")))


def answer_commands(
    enc: Encode, model: str, single: list[str], batched: list[str], *, query: bool = False
) -> None:
    """The command loop: one RESULT line per command until "quit" or end of stdin."""
    engine: Any = None
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        out: dict[str, Any] = {}
        if cmd == "single":
            out = time_single(enc, single[: int(arg or len(single))])
        elif cmd == "batched":
            out = time_batched(enc, batched, int(arg or 1))
        elif cmd == "engine":
            if engine is None:
                engine = load_engine(model, single[:10])
            out = time_engine(engine, single[: int(arg or len(single))], query=query)
        elif cmd == "quit":
            break
        out["rss_mb"], out["rss_peak_mb"] = rss_mb(os.getpid())
        print("RESULT " + json.dumps(out), flush=True)


def time_single(enc: Encode, texts: list[str]) -> dict[str, Any]:
    """encode([text]) one text at a time: the in-process equivalent of the c=1 level."""
    lat = []
    for text in texts:
        s = time.perf_counter()
        enc([text], 32)
        lat.append((time.perf_counter() - s) * 1000)
    return {
        "single_n": len(lat),
        "single_p50_ms": pct(lat, 50),
        "single_p95_ms": pct(lat, 95),
        "single_p99_ms": pct(lat, 99),
    }


def time_batched(enc: Encode, batched: list[str], repeats: int) -> dict[str, Any]:
    """encode(texts, batch_size=64) throughput (median of `repeats`), then 32-text calls."""
    times = []
    for _ in range(repeats):
        s = time.perf_counter()
        enc(batched, 64)
        times.append(time.perf_counter() - s)
    s = time.perf_counter()
    for i in range(0, len(batched), 32):  # the shape of the c=4 x 32 level
        enc(batched[i : i + 32], 32)
    return {
        "batched_n": len(batched),
        "batched_texts_per_s": len(batched) / statistics.median(times),
        "batch32_texts_per_s": len(batched) / (time.perf_counter() - s),
    }


def load_engine(model: str, warm_texts: list[str]) -> Any:
    """localrank's own engine, in-process and warmed up: the daemon's serving overhead is the
    daemon's c=1 p50 minus this engine's embed([text]) p50."""
    # Imported here: only the engine command needs localrank's engine (and its torch).
    from localrank.config import load_settings
    from localrank.engine.load import load_engine as load

    engine = load(load_settings({"model": model, "backend": "cpu"}, environ={}))
    engine.optimize()  # what the daemon does once it serves
    for text in warm_texts:
        engine.embed([text])
    return engine


def time_engine(engine: Any, texts: list[str], *, query: bool = False) -> dict[str, Any]:
    """engine.embed([text]) one text at a time (no HTTP, no scheduler)."""
    lat = []
    for text in texts:
        s = time.perf_counter()
        engine.embed([text], query=query)
        lat.append((time.perf_counter() - s) * 1000)
    return {"engine_single_p50_ms": pct(lat, 50), "engine_single_p95_ms": pct(lat, 95)}
