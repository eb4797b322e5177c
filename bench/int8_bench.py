"""int8 against float32 (and bfloat16 where this CPU computes it natively) on torch CPU, in one
process, the engines' rounds interleaved so a busy machine slows each alike: load time (int8's
includes calibration and quantisation), one short instructed query at a time (p50 wall and
process CPU time), bulk texts/s (40 documents of 5-300 words, 8 a call) and the min cosine of
each dtype's vectors to float32's, documents and queries apart.

`--avx2` runs the same in a child process whose torch, oneDNN and MKL are held to AVX2
instructions (an AVX2-only laptop; bfloat16 is then not native and is left out).

    python -m bench.int8_bench [--model FOLDER|minilm] [--avx2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.kit.paths import BENCH_MODEL, RESULTS, minilm
from bench.kit.texts import mixed_texts
from localrank.config import load_settings
from localrank.engine.core import Engine
from localrank.engine.load import load_engine
from localrank.engine.machine import read_cpu_features

AVX2_ONLY = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
}
TARGET_QUERY_MS = {"avx2": 150.0, "native-bf16": 100.0}
TARGET_MIN_COSINE = 0.999


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch

    model = minilm() if args.model == "minilm" else args.model
    held = os.environ.get("ATEN_CPU_CAPABILITY") == "avx2"
    dtypes = ["float32", "int8"]
    if not held and read_cpu_features().native_bf16() is not None:
        dtypes.append("bfloat16")
    engines: dict[str, Engine] = {}
    loads: dict[str, float] = {}
    for dtype in dtypes:
        started = time.perf_counter()
        settings = {"model": model, "dtype": dtype, "threads": args.threads, "home": args.home}
        engines[dtype] = load_engine(load_settings(settings, environ={}))
        loads[dtype] = time.perf_counter() - started
        print(f"loaded {dtype} in {loads[dtype]:.1f}s", file=sys.stderr, flush=True)
    for e in engines.values():
        e.optimize()  # what the daemon does once serving: query prefix, bf16 repacking
    queries = mixed_texts(args.queries, min_words=5, max_words=16, seed=8)
    docs = mixed_texts(args.docs, min_words=5, max_words=300, seed=7)
    lat: dict[str, list[float]] = {d: [] for d in dtypes}
    qcpu: dict[str, list[float]] = {d: [] for d in dtypes}
    bulk: dict[str, list[float]] = {d: [] for d in dtypes}
    bcpu: dict[str, list[float]] = {d: [] for d in dtypes}
    vectors: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for r in range(args.rounds):
        for dtype, e in engines.items():
            e.embed(queries[:2], query=True)  # warm
            qv = []
            for q in queries:
                c0, t0 = time.process_time(), time.perf_counter()
                qv.append(e.embed([q], query=True).vectors[0])
                lat[dtype].append(time.perf_counter() - t0)
                qcpu[dtype].append(time.process_time() - c0)
            c0, t0 = time.process_time(), time.perf_counter()
            dv = [e.embed(docs[i : i + 8]).vectors for i in range(0, len(docs), 8)]
            bulk[dtype].append(len(docs) / (time.perf_counter() - t0))
            bcpu[dtype].append(time.process_time() - c0)
            vectors[dtype] = (np.stack(qv), np.concatenate(dv))
            print(
                f"round {r} {dtype}: query p50 {statistics.median(lat[dtype][-20:]) * 1e3:.0f} ms"
                f", bulk {bulk[dtype][-1]:.2f} texts/s",
                file=sys.stderr,
                flush=True,
            )
    isa = torch.backends.cpu.get_cpu_capability()
    rows = []
    f32_q, f32_d = vectors["float32"]
    for dtype in dtypes:
        q, d = vectors[dtype]
        rows.append(
            {
                "model": Path(model).name,
                "isa": isa,
                "threads": torch.get_num_threads(),
                "dtype": engines[dtype].info.backend.dtype,
                "load_s": round(loads[dtype], 2),
                "query_p50_ms": round(statistics.median(lat[dtype]) * 1e3, 1),
                "query_cpu_p50_ms": round(statistics.median(qcpu[dtype]) * 1e3, 1),
                "bulk_texts_per_s": round(statistics.median(bulk[dtype]), 2),
                "bulk_cpu_s": round(min(bcpu[dtype]), 2),
                "min_cos_docs": round(float(cosines(d, f32_d).min()), 5),
                "min_cos_queries": round(float(cosines(q, f32_q).min()), 5),
                "query_speedup": round(
                    statistics.median(lat["float32"]) / statistics.median(lat[dtype]), 2
                ),
                "query_cpu_speedup": round(
                    statistics.median(qcpu["float32"]) / statistics.median(qcpu[dtype]), 2
                ),
                "bulk_cpu_speedup": round(min(bcpu["float32"]) / min(bcpu[dtype]), 2),
                "reason": engines[dtype].info.backend.dtype_reason,
            }
        )
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=str(BENCH_MODEL), help="folder, or 'minilm'")
    ap.add_argument("--avx2", action="store_true", help="in a child held to AVX2 instructions")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--queries", type=int, default=20, help="short queries, one at a time")
    ap.add_argument("--docs", type=int, default=40, help="documents, 8 a call")
    ap.add_argument("--home", default=str(RESULTS / "int8_home"), help="localrank home (caches)")
    ap.add_argument("--out", default=str(RESULTS / "int8_bench.jsonl"), help="rows appended")
    args = ap.parse_args()
    if args.avx2:
        argv = [a for a in sys.argv[1:] if a != "--avx2"]
        cmd = [sys.executable, "-m", "bench.int8_bench", *argv]
        return subprocess.run(cmd, env={**os.environ, **AVX2_ONLY}, check=False).returncode
    rows = measure(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    keys = [k for k in rows[0] if k != "reason"]
    print(" | ".join(keys))
    for row in rows:
        print(" | ".join(str(row[k]) for k in keys))
    for row in rows:
        print(f"{row['dtype']}: {row['reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
