"""How far bfloat16 moves the vectors: localrank's engine in bfloat16 and in float32, and the
model authors' recipe (transformers, as the Qwen3-Embedding model card runs it) in bfloat16,
each compared PER VECTOR with the authors' recipe in float32, for documents and for queries.

The issue's bar: localrank in bfloat16 within cosine 0.999 of float32 for every vector, and no
further from it than the authors' own recipe run in bfloat16 is.

    python -m bench.bf16_accuracy [--model FOLDER] [--n 24]     # default: the 0.6B-shape model
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

from bench.kit.paths import RESULTS
from bench.kit.texts import mixed_texts
from localrank.config import DEFAULT_INSTRUCTION, load_settings
from localrank.engine.load import load_engine
from models.build_test_models import bench_model


def authors_recipe(model_dir: Path, texts: list[str], dtype: str) -> np.ndarray:
    """The Qwen3-Embedding model card: left padding, last-token pooling, L2 normalisation."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir), padding_side="left")
    model = AutoModel.from_pretrained(str(model_dir), dtype=getattr(torch, dtype)).eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), 8):
            batch = tok(texts[i : i + 8], padding=True, truncation=True, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            out.append(F.normalize(hidden[:, -1].float(), p=2, dim=1).numpy())
    del model
    return np.concatenate(out)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", help="model folder (default: the 0.6B-shape bench model)")
    ap.add_argument("--n", type=int, default=24, help="documents (and as many queries)")
    ap.add_argument("--out", default=str(RESULTS / "bf16_accuracy.csv"), help="CSV to write")
    args = ap.parse_args()
    if args.model is None:
        args.model = str(bench_model())
    model = Path(args.model)
    docs = mixed_texts(args.n, seed=7)
    queries = [
        f"Instruct: {DEFAULT_INSTRUCTION}\nQuery:{q}"
        for q in mixed_texts(args.n, min_words=5, max_words=16, seed=8)
    ]
    rows = []
    for kind, texts in (("documents", docs), ("queries", queries)):
        t = time.perf_counter()
        ref32 = authors_recipe(model, texts, "float32")
        ref16 = authors_recipe(model, texts, "bfloat16")
        print(f"[{kind}] authors' recipe fp32 + bf16 in {time.perf_counter() - t:.0f}s", flush=True)
        candidates = {"authors' recipe bfloat16": ref16}
        for dtype in ("bfloat16", "float32"):
            engine = load_engine(
                load_settings({"model": str(model), "backend": "cpu", "dtype": dtype}, environ={})
            )
            engine.optimize()  # the daemon's steady state (repacked bf16 weights)
            # Raw texts through the engine (queries are already formatted above, so they take
            # the cached-prefix path the daemon's queries take).
            candidates[f"localrank {dtype}"] = engine.embed(texts).vectors
            engine.close()
        for name, vectors in candidates.items():
            c = cosines(vectors, ref32)
            row = {
                "texts": kind,
                "n": len(texts),
                "impl": name,
                "min_cosine": round(float(c.min()), 6),
                "mean_cosine": round(float(c.mean()), 6),
                "max_abs_diff": float(np.abs(vectors - ref32).max()),
            }
            rows.append(row)
            print(
                f"  {name:26s} cosine to authors' float32: min {c.min():.6f} "
                f"mean {c.mean():.6f}  max |diff| {row['max_abs_diff']:.2e}",
                flush=True,
            )
    ok = all(
        r["min_cosine"] >= 0.999
        and r["min_cosine"]
        >= next(
            x["min_cosine"]
            for x in rows
            if x["texts"] == r["texts"] and x["impl"] == "authors' recipe bfloat16"
        )
        for r in rows
        if r["impl"] == "localrank bfloat16"
    )
    print(
        "TARGET localrank bf16 per-vector cosine >= 0.999 and >= the authors' bf16: "
        + ("PASS" if ok else "FAIL")
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
