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

When: the load calibrates (outlier columns, the accuracy check) and serves at once; the integer
weights and fbgemm's layout (~7 s of single-threaded prepack for the 0.6B shape, ~14 s of CPU
with the rounding) are made in the background once the daemon serves (`pack_all`), as the
bfloat16 repack is. Until a weight's turn, `Int8Pending` computes the same scheme from its
float32 weight: the same per-token scaling, outlier columns and 8-bit activations (fbgemm's
rounding of them, replicated), against the exact weight instead of its two 7-bit levels, which
are within 1/126^2 of a row's max of it. Each matmul's output is the packed path's to 1e-4
(relative; float32's is 2e-3 to 1e-2 away), and its vectors as close to the packed path's as
those are to themselves in another batch (all-MiniLM-L6-v2, min cosine: 0.9995 and 0.9995; any
difference upstream re-draws the roundings downstream, as a batch's grid does), and as close
to float32's (0.9996): one precision, one fingerprint, before and after.
Tried and left: SmoothQuant's migration of activation scale into the weights (min cosine 0.9979
-> 0.9934 at alpha 0.5 on MiniLM: the outlier columns already take what it would, and the
weights pay), and more outlier columns (32, 64: no change).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import cast

import numpy as np
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
        cols = self.cols
        scaled, amax = per_token(x, cols)
        kernel = partial(torch.ops.quantized.linear_dynamic, scaled, self.packed, False)  # 8-bit x
        both = pooled(kernel) if pool else kernel()
        n = both.shape[1] // 2
        y = both[:, :n].add_(both[:, n:]).mul_(amax)
        if cols is not None and self.outliers is not None:
            y.addmm_(x.index_select(1, cols), self.outliers)
        return y if bias is None else y.add_(bias)


def per_token(x: Tensor, cols: Tensor | None) -> tuple[Tensor, Tensor]:
    """x with each row scaled to max |x| = 1, and the rows' max |x| [M, 1]. fbgemm quantises
    the whole input with one scale; such rows make that scale every row's own (the output is
    linear in x, so it scales back exactly). The outlier columns' weights are zero in the int8
    pack: they are left out of each row's max and clamped (whatever they become there, they
    add nothing)."""
    magnitude = x.abs()
    if cols is not None:
        magnitude.index_fill_(1, cols, 0.0)
    amax = magnitude.amax(1, keepdim=True).clamp_(min=1e-12)
    scaled = x / amax
    if cols is not None:
        scaled.clamp_(-1.0, 1.0)
    return scaled, amax


def quantise(weight: Tensor, seen: Tensor | None, columns: int = OUTLIER_COLUMNS) -> Int8Weight:
    """float32 [N, K] -> Int8Weight. `seen`: the calibrated max |x| of each input channel (None:
    no outlier columns)."""
    cols = outlier_columns(weight, seen, columns)
    q, scale, outliers = _int8_rows(weight, cols)
    return Int8Weight(_pack(q, scale), cols, outliers)


def outlier_columns(
    weight: Tensor, seen: Tensor | None, columns: int = OUTLIER_COLUMNS
) -> Tensor | None:
    """The input channels with the largest calibrated |x| * max |W|, sorted (None: none)."""
    count = min(columns, weight.shape[1] // 16)
    if seen is None or not count:
        return None
    importance = seen * weight.float().abs().amax(0)
    return importance.topk(count).indices.sort().values


def _int8_rows(weight: Tensor, cols: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Both levels' integers [2N, K] and scales [2N], and the outlier columns of W transposed."""
    w = weight.float()
    outliers = None
    if cols is not None:
        outliers = w[:, cols].t().contiguous()
        w = w.index_fill(1, cols, 0.0)  # a copy: the float32 weight stays intact
    q1, s1 = _round_rows(w)
    q2, s2 = _round_rows(w - q1.float() * s1[:, None])
    return torch.cat([q1, q2]), torch.cat([s1, s2]), outliers


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


class Int8Pending:
    """The int8 scheme from the float32 weight, until `pack_all` reaches it (the module's text):
    Int8Weight's per-token scaling and outlier columns, and the 8-bit activations fbgemm would
    compute with (its per-call asymmetric grid over the scaled input's min and max), dequantised
    and multiplied by the exact weight."""

    __slots__ = ("weight", "cols")

    def __init__(self, weight: Tensor, cols: Tensor | None) -> None:
        self.weight = weight
        self.cols = cols

    def __call__(self, x: Tensor, bias: Tensor | None = None, pool: bool = False) -> Tensor:
        cols = self.cols
        scaled, amax = per_token(x, cols)
        scale, zero = _activation_grid(scaled)
        # To fbgemm's grid and back: (clamp(round(x / s + z), 0, 255) - z) * s.
        grid = scaled.div_(scale).add_(zero).round_().clamp_(0, 255).sub_(zero).mul_(scale)
        mixed = grid.mul_(amax)
        if cols is not None:
            mixed.index_copy_(1, cols, x.index_select(1, cols))  # those stay float32
        product = partial(F.linear, mixed, self.weight, bias)
        return pooled(product) if pool else product()


def _activation_grid(x: Tensor) -> tuple[float, float]:
    """The scale and zero point torch's fbgemm dynamic linear picks for `x` (8-bit unsigned,
    the range widened to hold 0; quant_utils::ChooseQuantizationParams)."""
    lo, hi = (float(v) for v in torch.aminmax(x))
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255.0  # in double, as the zero point is chosen; used as a float
    as_float = float(np.float32(scale))
    if as_float == 0.0:
        scale, as_float = 0.1, float(np.float32(0.1))
    from_min, from_max = -lo / scale, 255.0 - hi / scale
    start = from_min if -abs(lo / scale) < 255.0 - abs(hi / scale) else from_max
    zero = 0.0 if start < 0 else 255.0 if start > 255 else float(round(start))
    return as_float, zero


def pending_all(linears: list[Linear], columns: Sequence[Tensor | None] | None = None) -> None:
    """At load: every linear computes the int8 scheme (Int8Pending), its outlier columns
    `columns` (one per linear, as a calibration at an earlier start chose them) or chosen from
    what the calibration pass recorded (if any)."""
    for i, lin in enumerate(linears):
        cols = columns[i] if columns is not None else outlier_columns(lin.weight, lin.seen)
        lin.int8 = Int8Pending(lin.weight, cols)
        lin.seen = None


def pack_all(
    linears: list[Linear],
    release: Callable[[Tensor], None],
    wait_idle: Callable[[], object] = lambda: None,
    threads: int = 1,
) -> int:
    """In the background once serving: each pending linear's integers and fbgemm layout, then
    its float32 weight released (`release` drops mapped pages). One weight per thread at a
    time, each single-threaded (so no thread keeps an OpenMP pool beside the model thread's:
    serve/threads.py), each started in a gap between forward passes (`wait_idle`). Forwards
    meanwhile use whichever form a weight has. Returns how many were packed."""
    todo = [lin for lin in linears if isinstance(lin.int8, Int8Pending)]

    def pack(lin: Linear) -> None:
        wait_idle()
        pending = cast(Int8Pending, lin.int8)
        torch.set_num_threads(1)
        with torch.inference_mode():
            q, scale, outliers = _int8_rows(pending.weight, pending.cols)
            lin.int8 = Int8Weight(_pack(q, scale), pending.cols, outliers)
        release(lin.weight)
        lin.weight = lin.weight.new_empty((0,))

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        list(pool.map(pack, todo))
    return len(todo)


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
