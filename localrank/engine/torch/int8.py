"""int8 matmuls for the CPU forwards: fbgemm's dynamic quantised linear, the fastest kernel torch
ships for skinny inputs on AVX2 and AVX-512 alike (one Qwen3-0.6B layer at 1-12 rows: 4.2-9.1x
float32 on AVX-512, 4.7x under AVX2; measured in the issue 22 research).

The scheme, per weight [N, K]:
- weights: two levels of symmetric 7-bit integers per output channel, W ~ s1 q1 + s2 q2 with
  q2 the rounding residual of q1, packed as one [2N, K] int8 weight (one matmul; the halves of
  its output are added). One level stops at min cosine 0.9987 to float32 on all-MiniLM-L6-v2
  even with 8-bit activations; two reach 0.9996 (and 0.9995 on the Qwen3-0.6B shape, beside
  llama.cpp q8_0's 0.9994). Two bytes a weight: half of float32's, bfloat16's count;
- activations: 8-bit per token (each row scaled to max |x| = 1 before fbgemm's per-tensor
  dynamic quantisation, its result scaled back). 7-bit weights are what make 8-bit activations
  safe: CPUs without VNNI multiply in vpmaddubsw, which saturates a pair of u8 x s8 products at
  int16, and 2 x 255 x 63 stays below 32767 (with 8-bit weights only 7-bit activations were,
  and they cost the most accuracy: min cosine 0.998 on MiniLM);
- outlier columns: the few input channels with the largest calibrated |x| * max |W| stay
  float32 (LLM.int8()'s decomposition, chosen once from a calibration pass over fixed texts).

Everything outside the matmuls (norms, RoPE, softmax, residual stream, pooling) stays float32.
Tried and left: SmoothQuant's migration of activation scale into the weights (min cosine 0.9979
-> 0.9934 at alpha 0.5 on MiniLM: the outlier columns already take what it would, and the
weights pay), and more outlier columns (32, 64: no change).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from localrank.engine.torch.layers import Linear, pooled

log = logging.getLogger(__name__)
# torch 2.13 marks its quantised-tensor constructors deprecated (pytorch#184982); fbgemm's prepack
# still takes only such a tensor. Said once in docs/models.md, not at every start.
warnings.filterwarnings(
    "ignore", message="torch.quantize_per_tensor, torch.quantize_per_channel", category=UserWarning
)

# Input channels kept float32 per weight: at most this many, and at most K / 16 of them.
OUTLIER_COLUMNS = 16
# The probe: a short query's projection, [12 x 1024] @ [1024 x 3072] (row count of one query).
PROBE_SHAPE = (12, 1024, 3072)
PROBE_BUDGET_S = 0.03
PROBE_MIN_ROUNDS = 2
PROBE_MAX_ROUNDS = 6


# Weights: two levels of integers in [-WEIGHT_MAX, WEIGHT_MAX] (7 bits: see the module's text).
WEIGHT_MAX = 63


class Int8Weight:
    """One weight in fbgemm's packed int8 layout (both levels), with its float32 outlier
    columns."""

    __slots__ = ("packed", "cols", "outliers")

    def __init__(self, packed: Tensor, cols: Tensor | None, outliers: Tensor | None) -> None:
        self.packed = packed
        self.cols = cols  # int64 [C] input channels computed in float32, or None
        self.outliers = outliers  # float32 [C, N]: those columns of W, transposed

    def __call__(self, x: Tensor, bias: Tensor | None = None, pool: bool = False) -> Tensor:
        """x @ W^T (+ bias); `pool`: the int8 kernel runs on torch's whole thread pool
        (layers.pooled), the per-token scaling around it where it is called."""
        # Per-token: fbgemm quantises the whole input with one scale; rows of max |x| = 1 make
        # that scale every row's own (the output is linear in x, so it scales back exactly).
        cols = self.cols
        magnitude = x.abs()
        if cols is not None:
            # The outlier columns' weights are zero in the int8 pack: leave them out of each
            # row's max and clamp them (whatever they become there, they add nothing).
            magnitude.index_fill_(1, cols, 0.0)
        amax = magnitude.amax(1, keepdim=True).clamp_(min=1e-12)
        scaled = x / amax
        if cols is not None:
            scaled.clamp_(-1.0, 1.0)
        kernel = partial(torch.ops.quantized.linear_dynamic, scaled, self.packed, False)  # 8-bit x
        both = pooled(kernel) if pool else kernel()
        n = both.shape[1] // 2
        y = both[:, :n].add_(both[:, n:]).mul_(amax)
        if cols is not None and self.outliers is not None:
            y.addmm_(x.index_select(1, cols), self.outliers)
        return y if bias is None else y.add_(bias)


def quantise(weight: Tensor, seen: Tensor | None, columns: int = OUTLIER_COLUMNS) -> Int8Weight:
    """float32 [N, K] -> Int8Weight. `seen`: the calibrated max |x| of each input channel (None:
    no outlier columns)."""
    q, scale, cols, outliers = _int8_rows(weight, seen, columns)
    return Int8Weight(_pack(q, scale), cols, outliers)


def _int8_rows(
    weight: Tensor, seen: Tensor | None, columns: int
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    w = weight.float()
    k = w.shape[1]
    count = min(columns, k // 16)
    cols = outliers = None
    if seen is not None and count:
        importance = seen * w.abs().amax(0)
        cols = importance.topk(count).indices.sort().values
        outliers = w[:, cols].t().contiguous()
        w = w.index_fill(1, cols, 0.0)  # a copy: the float32 weight stays intact
    q1, s1 = _round_rows(w)
    q2, s2 = _round_rows(w - q1.float() * s1[:, None])
    return torch.cat([q1, q2]), torch.cat([s1, s2]), cols, outliers


def _round_rows(w: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-row integers in [-WEIGHT_MAX, WEIGHT_MAX] and the rows' scales."""
    scale = w.abs().amax(1).clamp_(min=1e-12).div_(WEIGHT_MAX)
    return (w / scale[:, None]).round_().clamp_(-WEIGHT_MAX, WEIGHT_MAX).to(torch.int8), scale


def _pack(q: Tensor, scale: Tensor) -> Tensor:
    n = q.shape[0]
    qw = torch._make_per_channel_quantized_tensor(
        q, scale.double(), torch.zeros(n, dtype=torch.long), 0
    )
    return torch.ops.quantized.linear_prepack(qw, None)


def quantise_all(linears: list[Linear], threads: int) -> None:
    """Quantise every linear (its calibration statistics, if any, pick the outlier columns).
    The arithmetic runs here, on torch's thread pool; fbgemm's prepack, single-threaded, runs
    on `threads - 1` other threads meanwhile (a pool of Python threads each running torch's
    parallel ops oversubscribed the cores: 83 s instead of a few on a busy 2-core machine).
    The float32 weights stay (`drop_float_weights` releases them)."""
    with ThreadPoolExecutor(max_workers=max(1, threads - 1)) as pool:
        pending = []
        for lin in linears:
            q, scale, cols, outliers = _int8_rows(lin.weight, lin.seen, OUTLIER_COLUMNS)
            pending.append((lin, pool.submit(_pack, q, scale), cols, outliers))
            lin.seen = None
        for lin, packed, cols, outliers in pending:
            lin.int8 = Int8Weight(packed.result(), cols, outliers)


def drop_float_weights(linears: list[Linear], release: Callable[[Tensor], None]) -> None:
    """Once every linear computes in int8, the float32 weights are dead memory; `release` drops
    the pages of those mapped from a file (the cast-weight cache)."""
    for lin in linears:
        if lin.int8 is not None:
            release(lin.weight)
            lin.weight = lin.weight.new_empty((0,))


def observe(linears: list[Linear]) -> None:
    """Have each linear record the max |x| of each input channel it sees (calibration)."""
    for lin in linears:
        lin.seen = torch.zeros(lin.weight.shape[1])


def supported() -> bool:
    """Whether this torch has fbgemm's quantised linear and computes it as the scheme expects
    (checked on a small case: a torch built without fbgemm, or a non-x86 CPU, has not)."""
    if "x86" not in torch.backends.quantized.supported_engines and (
        "fbgemm" not in torch.backends.quantized.supported_engines
    ):
        return False
    try:
        with torch.inference_mode():
            gen = torch.Generator().manual_seed(0)
            w = torch.randn(48, 64, generator=gen)
            x = torch.randn(5, 64, generator=gen)
            got = quantise(w, None)(x)
            want = F.linear(x, w)
    except (RuntimeError, AttributeError) as exc:
        log.debug("no fbgemm int8 linear here: %s", exc)
        return False
    rel = float((got - want).norm() / want.norm())
    return got.shape == want.shape and rel < 0.05


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
