"""Which dtype a backend computes in, and why: one decision, reported in the log, /health, /info.

On CPU, bfloat16 where the processor computes it natively AND a short matmul timing confirms it
is faster here (a feature flag does not prove the framework uses it); else int8 for families
whose int8 scheme meets the accuracy target, where a probe confirms it is faster (and a check at
load on the model's own weights confirms the accuracy); float32 otherwise.
Accelerators keep their rules (float16 on CUDA / MPS; MLX: the checkpoint's quantisation).
An explicit dtype setting always wins.

Framework-free: the backend passes the timing in as a function, so the decision can be tested
for machines we do not have.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from localrank.engine.machine import BF16_FEATURES, CpuFeatures
from localrank.engine.types import INT8_MARK

DTYPES = ("float32", "float16", "bfloat16", "int8")
# bfloat16 must beat float32 by this much on the probe matmul to be chosen: a margin over the
# timing noise of a busy machine (native bf16 measured 2.0-2.6x faster on AVX512-BF16 here).
MIN_BF16_SPEEDUP = 1.3
# int8 likewise (its kernel: 1.7-2x float32 on a short query's matmul on one AVX2 core).
MIN_INT8_SPEEDUP = 1.5
# int8 vectors must stay this close to float32's (min cosine, calibration texts) to be chosen.
INT8_MIN_COSINE = 0.999
# What a model's collections can hold (`held_precision`): float vectors (float32 and bfloat16
# share a fingerprint) or int8 ones.
FLOAT, INT8 = "float", "int8"


@dataclass(frozen=True)
class DtypeChoice:
    dtype: str
    reason: str


# () -> (float32 seconds, bfloat16 or int8 seconds) for the same matmul; raises if unsupported.
Timing = Callable[[], tuple[float, float]]


def requested(dtype: str, source: str) -> DtypeChoice:
    """An explicit dtype setting (`source` says which: --dtype, LOCALRANK_DTYPE, config file)."""
    return DtypeChoice(dtype, f"set by {source}")


def choose_cpu_dtype(
    features: CpuFeatures,
    timing: Timing,
    int8_timing: Timing | None = None,
    held: str | None = None,
) -> DtypeChoice:
    """bfloat16 if the CPU has native bf16 and the probe confirms the speed-up; else int8 if
    `int8_timing` is given (int8 runs here and the family's scheme is accurate enough) and
    confirms its speed-up; else float32. `held`: the precision this model's collections hold
    (`held_precision`), which "auto" keeps, so that they stay searchable without a re-embed."""
    if held == INT8 and int8_timing is not None:
        return _kept_int8()
    choice = _bf16_or_float32(features, timing)
    if choice.dtype != "float32":
        return choice
    return float_or_int8(choice, int8_timing, held)


def float_or_int8(
    base: DtypeChoice, int8_timing: Timing | None, held: str | None = None
) -> DtypeChoice:
    """The float choice `base`, or int8 where `int8_timing` is given (int8 runs here and the
    family offers it): int8 if this model's collections hold int8 vectors, `base` if they hold
    float ones (not probed), else int8 if its probe runs MIN_INT8_SPEEDUP faster than `base`."""
    if int8_timing is None:
        return base
    if held == INT8:
        return _kept_int8()
    if held == FLOAT:
        return DtypeChoice(
            base.dtype,
            f"{base.reason}; int8 not tried: this model's collections hold float vectors "
            "(to switch: --dtype int8, then re-embed them)",
        )
    return _int8_or(base, int8_timing)


def _kept_int8() -> DtypeChoice:
    return DtypeChoice(
        "int8",
        "this model's collections hold int8 vectors: int8 keeps them searchable (another "
        "dtype would need them re-embedded)",
    )


def held_precision(stored: Iterable[str], float_fingerprint: str) -> str | None:
    """The precision the collections bound to this model hold, from their fingerprints
    (`stored`) and the model's float one: FLOAT, INT8, or None (no such collection, or both)."""
    marks = {float_fingerprint: FLOAT, float_fingerprint + INT8_MARK: INT8}
    kinds = {marks[f] for f in stored if f in marks}
    return kinds.pop() if len(kinds) == 1 else None


def _int8_or(fallback: DtypeChoice, timing: Timing) -> DtypeChoice:
    name = fallback.dtype
    try:
        base, i8 = timing()
    except Exception as exc:  # a kernel that failed on this machine
        return DtypeChoice(name, f"{fallback.reason}; an int8 matmul failed here ({exc})")
    speedup = base / i8 if i8 > 0 else 0.0
    if speedup >= MIN_INT8_SPEEDUP:
        return DtypeChoice(
            "int8",
            f"{fallback.reason.split(':')[0]}; a probe matmul with int8 weights ran "
            f"{speedup:.1f}x faster than {name} (norms, softmax and pooling stay float32)",
        )
    return DtypeChoice(
        name,
        f"{fallback.reason}; int8 was only {speedup:.2f}x {name}'s speed "
        f"(needs {MIN_INT8_SPEEDUP}x)",
    )


def min_cosine(got: np.ndarray, reference: np.ndarray) -> float:
    """The lowest cosine between matching rows of two [N, dim] arrays of vectors: how far the
    int8 model's calibration vectors came from the float model's."""
    unit = [
        v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12) for v in (got, reference)
    ]
    return float((unit[0] * unit[1]).sum(axis=1).min())


def int8_inaccurate(choice: DtypeChoice, cosine: float, fallback: str = "float32") -> DtypeChoice:
    """The fallback (a float dtype) when the load-time check finds int8 vectors too far from
    the float model's."""
    return DtypeChoice(
        fallback,
        f"{choice.reason}, but its vectors of the calibration texts came within cosine "
        f"{cosine:.5f} of {fallback} (needs {INT8_MIN_COSINE}): {fallback}",
    )


def _bf16_or_float32(features: CpuFeatures, timing: Timing) -> DtypeChoice:
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
