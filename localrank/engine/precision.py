"""Which dtype a backend computes in, and why: one decision, reported in the log, /health, /info.

On CPU, bfloat16 where the processor computes it natively AND a short matmul timing confirms it
is faster here (a feature flag does not prove the framework uses it); float32 otherwise.
Accelerators keep their rules (float16 on CUDA / MPS; MLX: the checkpoint's quantisation).
An explicit dtype setting always wins.

Framework-free: the backend passes the timing in as a function, so the decision can be tested
for machines we do not have.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from localrank.engine.machine import BF16_FEATURES, CpuFeatures

DTYPES = ("float32", "float16", "bfloat16")
# bfloat16 must beat float32 by this much on the probe matmul to be chosen: a margin over the
# timing noise of a busy machine (native bf16 measured 2.0-2.6x faster on AVX512-BF16 here).
MIN_BF16_SPEEDUP = 1.3


@dataclass(frozen=True)
class DtypeChoice:
    dtype: str
    reason: str


# () -> (float32 seconds, bfloat16 seconds) for the same matmul; raises if bf16 is unsupported.
Timing = Callable[[], tuple[float, float]]


def requested(dtype: str, source: str) -> DtypeChoice:
    """An explicit dtype setting (`source` says which: --dtype, LOCALRANK_DTYPE, config file)."""
    return DtypeChoice(dtype, f"set by {source}")


def choose_cpu_dtype(features: CpuFeatures, timing: Timing) -> DtypeChoice:
    """bfloat16 if the CPU has native bf16 and the probe confirms the speed-up, else float32."""
    feature = features.native_bf16()
    if feature is None:
        wanted = ", ".join(BF16_FEATURES.get(features.arch, ())) or "a bf16 feature"
        return DtypeChoice(
            "float32",
            f"CPU ({features.arch}) has no native bfloat16 ({wanted} not in {features.source}): "
            "float32 is faster and exact",
        )
    try:
        f32, bf16 = timing()
    except Exception as exc:  # a torch without bf16 kernels for this CPU, say
        return DtypeChoice(
            "float32", f"CPU has {feature} but a bfloat16 matmul failed here ({exc}): float32"
        )
    speedup = f32 / bf16 if bf16 > 0 else 0.0
    if speedup >= MIN_BF16_SPEEDUP:
        return DtypeChoice(
            "bfloat16",
            f"CPU computes bfloat16 natively ({feature}) and a probe matmul ran {speedup:.1f}x "
            "faster than float32 (norms, softmax and pooling stay float32)",
        )
    return DtypeChoice(
        "float32",
        f"CPU has {feature} but a probe matmul in bfloat16 was only {speedup:.2f}x float32's "
        f"speed (needs {MIN_BF16_SPEEDUP}x): float32",
    )


def accelerator_dtype(device: str) -> DtypeChoice:
    """CUDA and MPS: float16, what the authors ship halved again and what their kernels favour."""
    return DtypeChoice("float16", f"float16 on {device}: half precision is native there")
