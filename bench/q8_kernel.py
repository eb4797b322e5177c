"""The int8 kernel alone (localrank/engine/torch/q8.c): the matmuls of Qwen3-Embedding-0.6B's 28
layers (q/k/v stacked 4096 x 1024, o 1024 x 2048, gate/up stacked 6144 x 1024, down 1024 x
3072), each layer's weights distinct (0.44 GB of int8, read from memory as a query does), for a
few row counts, with the instructions this CPU has (AVX512-VNNI where present) and held to AVX2.
Best of 5 passes; random weights (the kernel's cost does not depend on the values).

    python -m bench.q8_kernel [--rows 1,8,12,16,24,32] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from localrank.engine.torch import int8

SHAPES = [(4096, 1024), (1024, 2048), (6144, 1024), (1024, 3072)]  # (N, K) of one layer
LAYERS = 28


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", default="1,8,12,16,24,32")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    q8 = int8.kernel()
    if q8 is None:
        print("the int8 kernel is not available here")
        return 1
    gen = torch.Generator().manual_seed(0)
    one = [int8.quantise(torch.randn(n, k, generator=gen), None) for n, k in SHAPES]
    layers = [
        [int8.Int8Weight(w.q.clone(), w.scales.clone(), None, None) for w in one]
        for _ in range(LAYERS)
    ]
    held = q8.isa()
    isas = ["avx2"] if q8.isa("best") == "avx2" else ["best", "avx2"]
    print(f"{LAYERS} layers, {args.threads} threads; ms per pass (best of 5)")
    try:
        for isa in isas:
            name = q8.isa(isa)
            for rows in (int(r) for r in args.rows.split(",")):
                xs = [torch.randn(rows, k, generator=gen) for _, k in SHAPES]
                ys = [torch.empty(rows, n) for n, _ in SHAPES]

                def once(xs: list[torch.Tensor] = xs, ys: list[torch.Tensor] = ys) -> None:
                    for layer in layers:
                        for w, x, y in zip(layer, xs, ys, strict=True):
                            q8.linear(
                                x.data_ptr(), x.shape[0], x.shape[1], w.q.data_ptr(),
                                w.scales.data_ptr(), y.shape[1], y.data_ptr(), args.threads,
                                0, 0, 0,
                            )  # fmt: skip

                once()
                best = float("inf")
                for _ in range(5):
                    t0 = time.perf_counter()
                    once()
                    best = min(best, time.perf_counter() - t0)
                print(f"{name:>10}  {rows:3d} rows  {best * 1e3:7.1f} ms", flush=True)
    finally:
        q8.isa("avx2" if held == "avx2" else "best")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
