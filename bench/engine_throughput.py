"""Bulk embedding throughput: localrank's engine on each backend here vs sentence-transformers.

1,000 texts of 5 to 300 words, the same model and texts, measured in the same run, the runs
interleaved; the result is the ratio (absolute times on a shared machine are noise). Each side
runs in a process of its own with the settings it has in real use: sentence-transformers loads
the folder the way a user would, at its default dtype (the checkpoint's) and torch's default
threads; localrank's engine as the daemon loads it (auto dtype, its thread settings, repacked
weights). Writes bench/results/engine.csv (or --out).

    python -m bench.engine_throughput [--model FOLDER] [--n 1000] [--repeat 3] [--backends cpu,mlx]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.kit.paths import RESULTS, ROOT, minilm
from bench.kit.texts import mixed_texts
from localrank.config import load_settings
from localrank.engine.load import load_engine


class Side:
    """One implementation in a process of its own, loaded and warm, timing a run on request: each
    side keeps the runtime settings it has in real use (sentence-transformers: torch's defaults;
    localrank: what its engine sets before torch loads, e.g. its OpenMP spin), which one
    shared process could not give both."""

    def __init__(self, impl: str, args: argparse.Namespace, vectors: Path) -> None:
        cmd = [sys.executable, "-m", "bench.engine_throughput", "--side", impl]
        cmd += ["--model", args.model, "--n", str(args.n)]
        cmd += ["--st-batch-size", str(args.st_batch_size), "--vectors", str(vectors)]
        self.vectors = vectors
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT
        )
        self.info = json.loads(self._line("READY "))

    def _line(self, prefix: str) -> str:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(prefix):
                return line[len(prefix) :]
        raise RuntimeError(f"side {self.proc.args} exited with {self.proc.wait()}")

    def run(self) -> float:
        assert self.proc.stdin is not None
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        return float(self._line("SECONDS "))

    def close(self) -> np.ndarray:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=120)
        return np.load(self.vectors)


def side(args: argparse.Namespace) -> None:
    """Inside a Side's process: load, warm up, then time a full pass per "run" line."""
    texts = mixed_texts(args.n)
    embed: Callable[[list[str]], np.ndarray]
    if args.side == "st":
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(args.model, device="cpu")
        dtype = str(next(st.parameters()).dtype).removeprefix("torch.")
        info = {"impl": "sentence-transformers", "backend": "torch", "device": "cpu"}

        def embed(batch: list[str]) -> np.ndarray:
            return np.asarray(
                st.encode(batch, batch_size=args.st_batch_size, normalize_embeddings=True)
            )

    else:
        settings = load_settings(
            {"model": args.model, "backend": args.side, "max_tokens": 8192}, environ={}
        )
        engine = load_engine(settings)
        engine.optimize()  # what a daemon does once it serves: steady state
        b = engine.info.backend
        dtype = b.dtype
        info = {"impl": "localrank", "backend": b.backend, "device": b.device}

        def embed(batch: list[str]) -> np.ndarray:
            return engine.embed(batch).vectors

    embed(texts[:16])
    print("READY " + json.dumps({**info, "dtype": dtype}), flush=True)
    vectors = None
    for line in sys.stdin:
        if line.strip() == "run":
            t0 = time.perf_counter()
            vectors = embed(texts)
            print(f"SECONDS {time.perf_counter() - t0}", flush=True)
    if vectors is not None:
        np.save(args.vectors, vectors)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", help="model folder (default: all-MiniLM-L6-v2 from its wheel)")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--backends", default="cpu,mlx")
    ap.add_argument("--st-batch-size", type=int, default=32, help="sentence-transformers default")
    ap.add_argument("--out", default=str(RESULTS / "engine.csv"), help="CSV to write")
    ap.add_argument("--side", help=argparse.SUPPRESS)  # internal: run one side (see Side)
    ap.add_argument("--vectors", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.model is None:
        args.model = minilm()
    if args.side:
        side(args)
        return
    sides: dict[str, Side] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for impl in ["st", *args.backends.split(",")]:
            sides[impl] = Side(impl, args, Path(tmp) / f"{impl}.npy")
        times: dict[str, list[float]] = {impl: [] for impl in sides}
        for _ in range(args.repeat):  # interleaved: a shared machine's load drifts
            for impl, sd in sides.items():
                times[impl].append(sd.run())
        vectors = {impl: sd.close() for impl, sd in sides.items()}
    ref_s, reference = statistics.median(times["st"]), vectors["st"]
    ref_tps = args.n / ref_s
    st_info = sides["st"].info
    print(
        f"sentence-transformers (torch cpu {st_info['dtype']}, batch {args.st_batch_size}): "
        f"{ref_tps:8.2f} texts/s"
    )
    rows = [
        {
            "impl": "sentence-transformers",
            "backend": "torch",
            "device": "cpu",
            "dtype": st_info["dtype"],
            "texts": args.n,
            "seconds": round(ref_s, 3),
            "texts_per_s": round(ref_tps, 2),
            "ratio_vs_st": 1.0,
            "min_cosine_vs_st": 1.0,
        }
    ]
    for backend in args.backends.split(","):
        secs, got = statistics.median(times[backend]), vectors[backend]
        diff = float(abs(got - reference).max())
        cos = float((got * reference).sum(axis=1).min())
        tps = args.n / secs
        info = sides[backend].info
        print(
            f"localrank {info['backend']}/{info['device']} {info['dtype']}: {tps:8.2f} texts/s  "
            f"ratio {tps / ref_tps:5.2f}x  (vs ST: max |diff| {diff:.1e}, min cosine {cos:.6f})"
        )
        rows.append(
            {
                "impl": "localrank",
                "backend": info["backend"],
                "device": info["device"],
                "dtype": info["dtype"],
                "texts": args.n,
                "seconds": round(secs, 3),
                "texts_per_s": round(tps, 2),
                "ratio_vs_st": round(tps / ref_tps, 3),
                "min_cosine_vs_st": round(cos, 6),
            }
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
