"""int8 matmuls for the CPU forwards: weights held in blocks of 32 8-bit integers along the
input dimension, each block with its own float32 scale (llama.cpp's q8_0 layout), each call's
input rows rounded the same way, multiplied by localrank's own kernel (q8.c: AVX2 and FMA, the
integer sums exact; built with the package, see setup.py).

Why blocks, and why a kernel of our own. torch's fastest int8 kernel for skinny inputs, fbgemm's
dynamic linear, quantises a call's input with one asymmetric unsigned 8-bit grid and multiplies
in vpmaddubsw, which saturates a pair of u8 x s8 products at int16 on CPUs without VNNI: 8-bit
weights were unsafe there, so that scheme held two levels of 7-bit weights per output channel
(two bytes a weight, twice the multiply-adds: a short query's matmuls compute-bound at ~106 ms
for the Qwen3-0.6B shape on 2 AVX2 cores). Symmetric integers in [-127, 127] on both sides never
saturate (|q| x (p * sign q): 2 x 127 x 127 < 32767), so one level of 8-bit weights is safe, and
a scale per block of 32 follows both the weights' and the activations' outliers (min cosine to
float32 on all-MiniLM-L6-v2's real weights: 0.99977 with the outlier columns below, 0.99917
without; the fbgemm scheme reached 0.99955; per-channel weights with per-block activations
0.99875, blocks of 64 0.99858). 1.125 bytes a weight; a short query's matmuls 54-63 ms (28
layers, 12 rows, 2 threads; VNNI or AVX2: bench/q8_kernel.py), against fbgemm's 88-99 ms. The
kernel holds weights packed (LAYOUT) so a group of 8 blocks sums lane by lane; a Qwen3 forward in
int8 computes its real tokens only (layers.Packing, no bucket).

Outlier columns: the few input channels with the largest calibrated |x| * max |W| stay float32
(LLM.int8()'s decomposition, chosen once from a calibration pass over fixed texts).

Everything outside the matmuls (norms, RoPE, softmax, residual stream, pooling) stays float32.
Each row is rounded by itself: a row's vector does not depend on the rows batched with it (up to
float32's summation order: from FLOAT_ROWS rows the same product runs through torch's float32
GEMM).

When: the load calibrates (outlier columns, the accuracy check), rounds every weight (~0.2 s
for the 0.6B shape on 2 threads) and drops the float32 weights' pages; later starts map the
rounded weights kept in the cache folder (weight_cache.Int8Weights) instead.
Tried and left: SmoothQuant's migration of activation scale into the weights (min cosine 0.9979
-> 0.9934 at alpha 0.5 on MiniLM, with the fbgemm scheme: the outlier columns already take what
it would, and the weights pay), and more outlier columns (32, 64: no change).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from functools import cache
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor

from localrank.engine.machine import read_cpu_features
from localrank.engine.torch.layers import Linear, kernel_threads

log = logging.getLogger(__name__)

# Integers per block (and per scale), on both sides of a product. A weight's input size must
# be a multiple of it (a weight whose is not stays float32).
BLOCK = 32
# From this many input rows a product goes through float32: the rounded input times the
# dequantised weight in torch's GEMM (MKL), faster there than the kernel, whose per-block scaling
# costs the same per row at any batch size. The same product to float32's summation order.
# Measured, [1024 rows x 1024] @ [1024 x 4096] on 2 cores: kernel 48.7 ms, through float32 32.3
# (float32 itself 27.5) with AVX-512; under AVX2 60.4 / 55.7 / 46.1. The two cross at ~128 rows
# with AVX-512 and ~256-384 under AVX2.
FLOAT_ROWS = 256
# The scheme's name, in the calibration record's key (a record of another scheme is not used).
SCHEME = "q8-blocks-32"
# How Int8Weight.q orders its integers (q8.c's header: within each group of 8 blocks, 4-byte
# pieces interleaved, so the kernel sums 8 blocks lane by lane), in the kept weights' key.
LAYOUT = "packed-groups-8"
# Input channels kept float32 per weight: at most this many (the kernel's room), and at most
# K / 16 of them.
OUTLIER_COLUMNS = 16
# The probe: a short query's projection, [12 x 1024] @ [1024 x 3072] (row count of one query).
PROBE_SHAPE = (12, 1024, 3072)
PROBE_BUDGET_S = 0.03
PROBE_MIN_ROUNDS = 2
PROBE_MAX_ROUNDS = 6


@cache
def kernel() -> ModuleType | None:
    """The compiled kernel (localrank.engine.torch._q8), or None: not built (no compiler at
    install, not x86-64), or a CPU without AVX2 and FMA, where it must not run. It multiplies
    with AVX512-VNNI where the CPU has it (`_q8.isa()`; the same integers, so the same
    results: 1.1-1.3x faster for a short query)."""
    if not read_cpu_features().avx2_fma():
        return None
    try:
        from localrank.engine.torch import _q8  # type: ignore[attr-defined]
    except ImportError as exc:
        log.debug("int8 kernel not built: %s", exc)
        return None
    if torch.backends.cpu.get_cpu_capability() == "AVX2":
        _q8.isa("avx2")  # torch held to AVX2 (an AVX2-only CPU imitated): the kernel too
    return _q8


def _kernel() -> ModuleType:
    k = kernel()
    if k is None:
        raise RuntimeError("the int8 kernel is not available on this machine")
    return k


def round_blocks(t: Tensor, threads: int = 1, packed: bool = False) -> tuple[Tensor, Tensor]:
    """float32 [R, K] -> (int8 [R, K], float32 scales [R, K / 32]): each block of 32 scaled to
    max |v| = 127 and rounded to the nearest integer (ties to even). The integers in order, or
    `packed` in the kernel's layout (LAYOUT)."""
    t = t.float().contiguous()
    rows, k = t.shape
    q = torch.empty(rows, k, dtype=torch.int8)
    s = torch.empty(rows, k // BLOCK)
    _kernel().quantize(t.data_ptr(), q.data_ptr(), s.data_ptr(), rows, k, threads, packed)
    return q, s


def from_blocks(q: Tensor, s: Tensor) -> Tensor:
    """The float32 values that (q in order, s) stand for."""
    rows, k = q.shape
    return (q.float().view(rows, k // BLOCK, BLOCK) * s[..., None]).view(rows, k)


class Int8Weight:
    """One weight [N, K] in int8 blocks (`q`, `scales`), with its float32 outlier columns (the
    kernel computes those too: their inputs left out of the rounding)."""

    __slots__ = ("q", "scales", "cols", "outliers")

    def __init__(self, q: Tensor, scales: Tensor, cols: Tensor | None, outliers: Tensor | None):
        self.q = q  # int8 [N, K] in the kernel's layout (LAYOUT), the outlier columns zero
        self.scales = scales  # float32 [N, K / 32]
        self.cols = cols  # int64 [C] input channels computed in float32, or None
        self.outliers = outliers  # float32 [N, 16]: those columns of W, zero-padded

    def __call__(self, x: Tensor, bias: Tensor | None = None, pool: bool = False) -> Tensor:
        """x [M, K] @ W^T (+ bias); `pool`: on the engine's threads inside a small pass
        (layers.kernel_threads)."""
        x = x.float().contiguous()
        n, k = self.q.shape
        if x.shape[0] >= FLOAT_ROWS:
            return self.through_float(x, bias, kernel_threads(pool))
        y = torch.empty(x.shape[0], n)
        cols, outliers = self.cols, self.outliers
        _kernel().linear(
            x.data_ptr(),
            x.shape[0],
            k,
            self.q.data_ptr(),
            self.scales.data_ptr(),
            n,
            y.data_ptr(),
            kernel_threads(pool),
            0 if cols is None else cols.data_ptr(),
            0 if cols is None else len(cols),
            0 if outliers is None else outliers.data_ptr(),
        )
        return y if bias is None else y.add_(bias)

    def dequantised(self, out: Tensor | None = None, threads: int = 1) -> Tensor:
        """float32 [N, K]: what the blocks stand for (the outlier columns zero)."""
        n, k = self.q.shape
        out = torch.empty(n, k) if out is None else out
        _kernel().dequantize(
            self.q.data_ptr(), self.scales.data_ptr(), n, k, out.data_ptr(), threads, True
        )
        return out

    def through_float(self, x: Tensor, bias: Tensor | None, threads: int) -> Tensor:
        """The same product for many rows: x rounded to its blocks and back, times the weight
        dequantised (for this call only), in float32, plus the outlier columns. Both operands
        are written into buffers this thread keeps (fresh memory costs a page fault every 4 KB:
        ~40% of the product's time at 1024 rows)."""
        cols = self.cols
        kept = x if cols is None else x.index_fill(1, cols, 0.0)
        rows, k = x.shape
        n = self.q.shape[0]
        weight, rounded = _scratch(n * k, rows * k)
        _kernel().round_trip(kept.data_ptr(), rows, k, rounded.data_ptr(), threads)
        w = self.dequantised(weight[: n * k].view(n, k), threads)
        y = F.linear(rounded[: rows * k].view(rows, k), w, bias)
        if cols is not None and self.outliers is not None:
            y.addmm_(x.index_select(1, cols), self.outliers[:, : len(cols)].t())
        return y


class _Scratch(threading.local):
    buffers: tuple[Tensor, Tensor] | None = None


_scratch_here = _Scratch()


def _scratch(first: int, second: int) -> tuple[Tensor, Tensor]:
    """Two float32 buffers of at least these sizes, kept by the calling thread (grown, never
    shrunk: the 0.6B shape's largest weight and a 2k-row batch, ~50 MB)."""
    held = _scratch_here.buffers
    if held is None or held[0].numel() < first or held[1].numel() < second:
        a = held[0] if held is not None and held[0].numel() >= first else torch.empty(first)
        b = held[1] if held is not None and held[1].numel() >= second else torch.empty(second)
        held = _scratch_here.buffers = (a, b)
    return held


def quantise(
    weight: Tensor, seen: Tensor | None, columns: int = OUTLIER_COLUMNS, threads: int = 1
) -> Int8Weight:
    """float32 [N, K] -> Int8Weight. `seen`: the calibrated max |x| of each input channel (None:
    no outlier columns)."""
    return with_columns(weight, outlier_columns(weight, seen, columns), threads)


def with_columns(weight: Tensor, cols: Tensor | None, threads: int = 1) -> Int8Weight:
    w = weight.float()
    outliers = None
    if cols is not None:
        cols = cols.to(torch.int64).contiguous()
        outliers = torch.zeros(w.shape[0], OUTLIER_COLUMNS)
        outliers[:, : len(cols)] = w[:, cols]
        w = w.index_fill(1, cols, 0.0)  # a copy: the float32 weight stays intact
    q, s = round_blocks(w, threads, packed=True)
    return Int8Weight(q, s, cols, outliers)


def outlier_columns(
    weight: Tensor, seen: Tensor | None, columns: int = OUTLIER_COLUMNS
) -> Tensor | None:
    """The input channels with the largest calibrated |x| * max |W|, sorted (None: none)."""
    count = min(columns, OUTLIER_COLUMNS, weight.shape[1] // 16)
    if seen is None or not count:
        return None
    importance = seen * weight.float().abs().amax(0)
    return importance.topk(count).indices.sort().values


def quantise_all(
    linears: list[Linear], columns: Sequence[Tensor | None] | None = None, threads: int = 1
) -> None:
    """Every linear (whose input size is a multiple of BLOCK) computes in int8, its outlier
    columns `columns` (one per linear, as a calibration at an earlier start chose them) or
    chosen from what the calibration pass recorded (if any). The float32 weights stay (the
    load may still go back to them): `release_all` drops them."""
    for i, lin in enumerate(linears):
        if lin.weight.shape[1] % BLOCK:
            lin.int8, lin.seen = None, None
            continue
        cols = columns[i] if columns is not None else outlier_columns(lin.weight, lin.seen)
        lin.int8 = with_columns(lin.weight, cols, threads)
        lin.seen = None


def release_all(linears: list[Linear], release: Callable[[Tensor], None]) -> None:
    """Drop the float32 weights the int8 ones replace (`release` drops mapped pages)."""
    for lin in linears:
        if lin.int8 is not None:
            release(lin.weight)
            lin.weight = lin.weight.new_empty((0,))


def tensors_of(linears: list[Linear]) -> list[tuple[str, Tensor]]:
    """Each int8 linear's tensors by name (`<index>.q`, `.scales`, `.outliers`): what
    weight_cache.Int8Weights keeps for the next start."""
    out = []
    for i, lin in enumerate(linears):
        w8 = lin.int8
        if isinstance(w8, Int8Weight):
            out += [(f"{i}.q", w8.q), (f"{i}.scales", w8.scales)]
            if w8.outliers is not None:
                out.append((f"{i}.outliers", w8.outliers))
    return out


def load_all(
    linears: list[Linear], tensors: dict[str, Tensor], columns: Sequence[Tensor | None]
) -> bool:
    """Every linear's Int8Weight from `tensors` (as `tensors_of` named them) and its outlier
    `columns` (the calibration record's, which the file's key includes): True when each linear
    that int8 computes found its tensors in the shapes it needs; else nothing is changed."""
    if len(columns) != len(linears):
        return False
    built: list[Int8Weight | None] = []
    for i, lin in enumerate(linears):
        n, k = lin.weight.shape
        if k % BLOCK:
            built.append(None)
            continue
        q, s = tensors.get(f"{i}.q"), tensors.get(f"{i}.scales")
        outliers = tensors.get(f"{i}.outliers")
        if q is None or s is None or q.shape != (n, k) or s.shape != (n, k // BLOCK):
            return False
        if q.dtype != torch.int8 or s.dtype != torch.float32:
            return False
        cols = columns[i]
        if (outliers is None) != (cols is None):
            return False
        if outliers is not None and outliers.shape != (n, OUTLIER_COLUMNS):
            return False
        cols = None if cols is None else cols.to(torch.int64).contiguous()
        built.append(Int8Weight(q, s, cols, outliers))
    for lin, w8 in zip(linears, built, strict=True):
        lin.int8, lin.seen = w8, None
    return True


def columns_of(linears: list[Linear]) -> list[Tensor | None]:
    """Each linear's outlier columns (for the calibration record)."""
    return [lin.int8.cols if isinstance(lin.int8, Int8Weight) else None for lin in linears]


def observe(linears: list[Linear]) -> None:
    """Have each linear record the max |x| of each input channel it sees (calibration)."""
    for lin in linears:
        lin.seen = torch.zeros(lin.weight.shape[1])


def supported() -> bool:
    """Whether the kernel runs here and computes the scheme (checked on a small case against
    the same blocks multiplied in float32)."""
    if kernel() is None:
        return False
    with torch.inference_mode():
        gen = torch.Generator().manual_seed(0)
        w = torch.randn(48, 320, generator=gen)
        x = torch.randn(5, 320, generator=gen)
        got = quantise(w, None)(x)
        want = F.linear(from_blocks(*round_blocks(x)), from_blocks(*round_blocks(w)))
    return got.shape == want.shape and float((got - want).norm() / want.norm()) < 1e-5


def int8_timing() -> tuple[float, float]:
    """(float32 seconds, int8 seconds) for the same short-query matmul: best of a few
    interleaved rounds, one thread, in that thread's CPU time (as cpu.bf16_timing)."""
    m, k, n = PROBE_SHAPE
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(n, k, generator=gen)
    x = torch.randn(m, k, generator=gen)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            q = quantise(w, None)
            runs: list[Callable[[], Tensor]] = [lambda: F.linear(x, w), lambda: q(x)]
            for run in runs:
                run()
            best = [float("inf"), float("inf")]
            deadline = time.perf_counter() + PROBE_BUDGET_S
            for i in range(PROBE_MAX_ROUNDS):
                for j, run in enumerate(runs):
                    t0 = time.thread_time()
                    run()
                    best[j] = min(best[j], time.thread_time() - t0)
                if i + 1 >= PROBE_MIN_ROUNDS and time.perf_counter() > deadline:
                    break
    finally:
        torch.set_num_threads(threads)
    log.debug("int8 probe: float32 %.3f ms, int8 %.3f ms", best[0] * 1e3, best[1] * 1e3)
    return best[0], best[1]
