"""torch on the CPU: its thread pools, and the probe that confirms bfloat16 is faster here.

Threads: one intra-op thread per physical core. Hyperthreads share a core's matmul units, so a
thread per logical CPU adds synchronisation without adding throughput; and OpenMP's barriers
make every extra runnable thread (a tokenizer's, another process's) stall the whole pool.
Inter-op parallelism is unused by the forwards (one model thread), so that pool gets one thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from localrank.engine.torch.layers import Linear, set_intra_threads

log = logging.getLogger(__name__)

# The probe: a [64 x 1024] @ [1024 x 1024] matmul, the size of a short query's projections.
PROBE_SHAPE = (64, 1024, 1024)
PROBE_BUDGET_S = 0.03  # stop timing after this (~2 ms a round on a quiet machine)
PROBE_MIN_ROUNDS = 2
PROBE_MAX_ROUNDS = 6


def configure_threads(intra: int) -> None:
    """Size torch's pools: `intra` threads for ops (on every thread that runs a forward:
    layers.claim_threads), one for inter-op work."""
    set_intra_threads(intra)
    if torch.get_num_threads() != intra:
        torch.set_num_threads(intra)
    try:
        if torch.get_num_interop_threads() != 1:
            torch.set_num_interop_threads(1)
    except RuntimeError:
        # Only settable before the first inter-op parallel work; harmless if already started.
        log.debug("torch inter-op threads already fixed at %d", torch.get_num_interop_threads())


def bf16_timing() -> tuple[float, float]:
    """(float32 seconds, bfloat16 seconds) for the same matmul: the best of a few interleaved
    runs, bounded by PROBE_BUDGET_S.

    One thread, timed in that thread's CPU time: a busy machine (other processes on the same
    cores) then stretches neither figure, where wall-clock timings of a multi-threaded matmul
    measured anything from 0.04x to 145x on this shared 2-core box.
    """
    m, k, n = PROBE_SHAPE
    # Values do not change a matmul's speed (no denormals here); filling is cheaper than randn.
    a32, w32 = torch.full((m, k), 0.5), torch.full((n, k), 0.25)
    a16, w16 = a32.to(torch.bfloat16), w32.to(torch.bfloat16)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            F.linear(a32, w32)  # first calls pay kernel selection / JIT
            F.linear(a16, w16)
            best = [float("inf"), float("inf")]
            started = time.perf_counter()
            deadline = started + PROBE_BUDGET_S
            for i in range(PROBE_MAX_ROUNDS):
                for j, (a, w) in enumerate(((a32, w32), (a16, w16))):
                    t0 = time.thread_time()
                    F.linear(a, w)
                    best[j] = min(best[j], time.thread_time() - t0)
                if i + 1 >= PROBE_MIN_ROUNDS and time.perf_counter() > deadline:
                    break
    finally:
        torch.set_num_threads(threads)
    log.debug(
        "bf16 probe: float32 %.3f ms, bfloat16 %.3f ms (%.0f ms wall)",
        best[0] * 1e3,
        best[1] * 1e3,
        (time.perf_counter() - started) * 1e3,
    )
    return best[0], best[1]


def onednn_pack(weight: Tensor) -> Tensor:
    """A bfloat16 weight in oneDNN's blocked layout (what layers.Linear calls when packed)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight, PACK_ROWS)


class Stackable(Protocol):
    """Linears that read the same input, stacked into one packed matmul (qwen3.Projection)."""

    @property
    def linears(self) -> tuple[Linear, ...]: ...

    def stack(self, pack: Callable[[Tensor], Tensor] | None = None) -> list[Tensor] | None: ...


def prepack(
    linears: list[Linear],
    release: Callable[[Tensor], None],
    wait_idle: Callable[[], object] = lambda: None,
    pack: Callable[[Tensor], Tensor] | None = None,
    stacks: Sequence[Stackable] = (),
) -> int:
    """Repack bfloat16 weights into oneDNN's blocked layout (see layers.Linear), once, at load:
    about 0.5 s of CPU for the 0.6B model; the linears of each of `stacks` are stacked into one
    packed weight on the way. `release` drops each original's mapped pages once its packed copy
    exists, so memory does not grow. `wait_idle` is called before each weight: it returns once
    no forward pass is running, so requests never share the cores with more than one weight's
    repack (a few ms). Returns how many packed weights were made: 0 when this torch cannot (no
    oneDNN, or a CPU whose oneDNN has no bfloat16 kernels: AVX2-only x86, say). `pack` replaces
    the oneDNN reorder (tests of the scheduling, which oneDNN's support must not decide)."""
    if pack is None:
        if not linears_supported():
            return 0
        pack = onednn_pack

    def waiting(lin: Linear) -> bool:
        return (
            lin.packed is None
            and lin.weight.dtype == torch.bfloat16
            and lin.weight.device.type == "cpu"
        )

    stacking = [s for s in stacks if len(s.linears) > 1 and all(map(waiting, s.linears))]
    in_stacks = {id(lin) for s in stacking for lin in s.linears}
    todo: list[Linear | Stackable] = [
        lin for lin in linears if waiting(lin) and id(lin) not in in_stacks
    ]
    todo += stacking

    def repack(unit: Linear | Stackable) -> None:
        wait_idle()
        if isinstance(unit, Linear):
            unit.packed = pack(unit.weight)
            release(unit.weight)
            return
        for weight in unit.stack(pack) or ():
            release(weight)

    # One weight per core at a time: each repack is single-threaded and releases the GIL.
    with ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads())) as pool:
        list(pool.map(repack, todo))
    return len(todo)


PACK_ROWS = 16  # the row count oneDNN tunes the layout for (a short query's tokens)


def linears_supported() -> bool:
    """Whether this torch's oneDNN repacks bfloat16 weights and computes with them exactly as a
    plain matmul does (checked on a small case: the ops are internal to torch)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        with torch.inference_mode():
            gen = torch.Generator().manual_seed(0)
            w = torch.randn(48, 32, generator=gen).to(torch.bfloat16)
            x = torch.randn(5, 32, generator=gen).to(torch.bfloat16)
            packed = onednn_pack(w)
            got = torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
            want = F.linear(x, w)
    except (RuntimeError, AttributeError) as exc:
        log.debug("no oneDNN weight packing here: %s", exc)
        return False
    return got.shape == want.shape and bool(torch.allclose(got.float(), want.float(), atol=0.05))
