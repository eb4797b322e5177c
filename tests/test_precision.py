"""The dtype decision and the core count, for machines we do not have (described by hand) and for
this one (read from the OS): bfloat16 only where the CPU computes it natively AND a probe matmul
confirms it is faster; threads one per physical core."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from localrank.engine.machine import (
    CpuFeatures,
    Topology,
    group_cores,
    macos_features,
    parse_cpu_list,
    parse_cpu_max,
    parse_cpuinfo,
    read_cpu_features,
    read_topology,
)
from localrank.engine.precision import (
    FLOAT,
    INT8,
    INT8_MIN_COSINE,
    MIN_BF16_SPEEDUP,
    MIN_INT8_SPEEDUP,
    DtypeChoice,
    accelerator_dtype,
    choose_cpu_dtype,
    float_or_int8,
    held_precision,
    int8_inaccurate,
    requested,
)

SAPPHIRE_RAPIDS = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme sse sse2 avx avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8
"""
ZEN4 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
SKYLAKE = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma avx512f avx512dq avx512bw\n"
GRAVITON3 = (
    "processor\t: 0\nFeatures\t: fp asimd evtstrm aes sha1 sve bf16 i8mm\nCPU part\t: 0xd40\n"
)
GRAVITON2 = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics\n"


def fast(speedup: float = 2.5):
    return lambda: (speedup * 1e-3, 1e-3)


def never_called() -> tuple[float, float]:
    raise AssertionError("no probe on a CPU without native bf16")


@pytest.mark.parametrize(
    ("cpuinfo", "machine", "feature"),
    [
        (SAPPHIRE_RAPIDS, "x86_64", "amx_bf16"),  # AMX first: it is the faster of the two
        (ZEN4, "x86_64", "avx512_bf16"),
        (GRAVITON3, "aarch64", "bf16"),
    ],
)
def test_native_bf16_and_a_faster_probe_choose_bfloat16(
    cpuinfo: str, machine: str, feature: str
) -> None:
    features = parse_cpuinfo(cpuinfo, machine)
    assert features.native_bf16() == feature
    choice = choose_cpu_dtype(features, fast())
    assert choice.dtype == "bfloat16"
    assert feature in choice.reason and "2.5x" in choice.reason


@pytest.mark.parametrize(
    ("cpuinfo", "machine"), [(SKYLAKE, "x86_64"), (GRAVITON2, "aarch64"), ("", "x86_64")]
)
def test_no_native_bf16_means_float32_without_probing(cpuinfo: str, machine: str) -> None:
    features = parse_cpuinfo(cpuinfo, machine)
    assert features.native_bf16() is None
    choice = choose_cpu_dtype(features, never_called)
    assert choice.dtype == "float32"
    assert "no native bfloat16" in choice.reason


def test_a_probe_that_is_not_faster_keeps_float32() -> None:
    features = parse_cpuinfo(ZEN4, "x86_64")
    slow = choose_cpu_dtype(features, fast(MIN_BF16_SPEEDUP * 0.9))
    assert slow.dtype == "float32" and "avx512_bf16" in slow.reason and "only" in slow.reason

    def broken() -> tuple[float, float]:
        raise RuntimeError("bf16 gemm not implemented")

    failed = choose_cpu_dtype(features, broken)
    assert failed.dtype == "float32" and "not implemented" in failed.reason


def test_int8_only_for_a_family_that_offers_it_and_a_faster_probe() -> None:
    """int8 is considered where bfloat16 is not chosen, only when the family's scheme is
    accurate enough (the backend then passes its int8 probe), and only if that probe is faster;
    a native bfloat16 that is faster still wins (int8 costs accuracy, gains little there)."""
    avx2 = parse_cpuinfo(SKYLAKE, "x86_64")
    choice = choose_cpu_dtype(avx2, never_called, fast(3.0))
    assert choice.dtype == "int8" and "3.0x" in choice.reason
    assert "no native bfloat16" in choice.reason
    slow = choose_cpu_dtype(avx2, never_called, fast(MIN_INT8_SPEEDUP * 0.9))
    assert slow.dtype == "float32" and "int8 was only" in slow.reason

    def broken() -> tuple[float, float]:
        raise RuntimeError("no int8 kernel")

    failed = choose_cpu_dtype(avx2, never_called, broken)
    assert failed.dtype == "float32" and "no int8 kernel" in failed.reason
    assert choose_cpu_dtype(avx2, never_called).dtype == "float32"  # not offered
    zen4 = parse_cpuinfo(ZEN4, "x86_64")
    assert choose_cpu_dtype(zen4, fast(), fast(3.0)).dtype == "bfloat16"
    # bfloat16 not faster there: int8 may still be.
    assert choose_cpu_dtype(zen4, fast(MIN_BF16_SPEEDUP * 0.9), fast(3.0)).dtype == "int8"
    undone = int8_inaccurate(choice, 0.9981)
    assert undone.dtype == "float32" and "0.99810" in undone.reason
    assert str(INT8_MIN_COSINE) in undone.reason


def test_auto_keeps_the_precision_the_collections_hold() -> None:
    """A collection holds one precision's vectors (the fingerprint says which), so "auto" keeps
    the one this model's collections were filled with rather than leave them unsearchable until
    re-embedded: float ones keep float32 where int8 would otherwise win (without probing it),
    int8 ones keep int8 even where bfloat16 is native (without probing either)."""
    avx2, zen4 = parse_cpuinfo(SKYLAKE, "x86_64"), parse_cpuinfo(ZEN4, "x86_64")
    kept = choose_cpu_dtype(avx2, never_called, never_called, held=FLOAT)
    assert kept.dtype == "float32" and "collections hold float vectors" in kept.reason
    assert "no native bfloat16" in kept.reason
    assert choose_cpu_dtype(avx2, never_called, fast(3.0), held=INT8).dtype == "int8"
    int8_kept = choose_cpu_dtype(zen4, never_called, never_called, held=INT8)
    assert int8_kept.dtype == "int8" and "collections hold int8 vectors" in int8_kept.reason
    # Where int8 cannot run (or the family does not offer it), the rules are as without them.
    assert choose_cpu_dtype(zen4, fast(), None, held=INT8).dtype == "bfloat16"
    assert choose_cpu_dtype(zen4, fast(), fast(3.0), held=FLOAT).dtype == "bfloat16"


def test_int8_against_another_float_dtype() -> None:
    """MLX on Metal weighs int8 against float16 by the same rule, and says so."""
    metal = DtypeChoice("float16", "float16 on the Metal GPU: half precision is native there")
    chosen = float_or_int8(metal, fast(3.0))
    assert chosen.dtype == "int8" and "3.0x faster than float16" in chosen.reason
    slow = float_or_int8(metal, fast(MIN_INT8_SPEEDUP * 0.9))
    assert slow.dtype == "float16" and "only" in slow.reason and "float16's speed" in slow.reason
    assert float_or_int8(metal, never_called, held=FLOAT).dtype == "float16"
    assert float_or_int8(metal, never_called, held=INT8).dtype == "int8"
    assert float_or_int8(metal, None, held=INT8) == metal  # int8 not offered here


def test_the_precision_held_is_read_from_this_models_fingerprints() -> None:
    mine = "Qwen/Qwen3-Embedding-0.6B@abc:1024:last_token:1234abcd"
    other = "sentence-transformers/all-MiniLM-L6-v2@def:384:mean:5678abcd"
    assert held_precision([], mine) is None
    assert held_precision([other, other + ":int8"], mine) is None  # another model's
    assert held_precision([mine, other + ":int8"], mine) == FLOAT
    assert held_precision([mine + ":int8", other, mine + ":int8"], mine) == INT8
    assert held_precision([mine, mine + ":int8"], mine) is None  # both: no rule to keep


def test_macos_features_from_sysctl() -> None:
    m2 = {"hw.optional.arm.FEAT_BF16": "1"}
    m1 = {"hw.optional.arm.FEAT_BF16": "0"}
    assert macos_features("arm64", m2.get).native_bf16() == "FEAT_BF16"
    assert macos_features("arm64", m1.get).native_bf16() is None
    assert macos_features("arm64", {}.get).native_bf16() is None  # old macOS: no such key
    intel = {"machdep.cpu.leaf7_features": "SMEP ERMS AVX512F AVX512BF16"}
    assert macos_features("x86_64", intel.get).native_bf16() == "avx512_bf16"
    choice = choose_cpu_dtype(macos_features("arm64", m2.get), fast(1.8))
    assert choice.dtype == "bfloat16" and "FEAT_BF16" in choice.reason


def test_int8_kernel_needs_avx2_and_fma() -> None:
    """q8.c is AVX2 and FMA code: only such x86 CPUs may run it (macOS lists AVX2 among the
    leaf-7 features and FMA elsewhere; every AVX2 CPU has FMA)."""
    assert parse_cpuinfo(SKYLAKE, "x86_64").avx2_fma()
    assert parse_cpuinfo("flags\t\t: fpu sse2 avx avx2 fma bmi2", "x86_64").avx2_fma()  # Zen 3
    assert not parse_cpuinfo("flags\t\t: fpu sse sse2 sse4_2 avx", "x86_64").avx2_fma()
    assert not parse_cpuinfo("flags\t\t: fpu sse2 avx avx2", "x86_64").avx2_fma()  # no fma
    assert not parse_cpuinfo(GRAVITON2, "aarch64").avx2_fma()
    intel = {"machdep.cpu.leaf7_features": "SMEP AVX2 BMI2"}
    assert macos_features("x86_64", intel.get).avx2_fma()
    assert not macos_features("arm64", {}.get).avx2_fma()


def test_explicit_settings_and_accelerators() -> None:
    assert requested("float32", "LOCALRANK_DTYPE") == requested("float32", "LOCALRANK_DTYPE")
    assert requested("bfloat16", "--dtype").reason == "set by --dtype"
    assert accelerator_dtype("mps").dtype == "float16"
    assert accelerator_dtype("cuda").dtype == "float16"


def test_this_machine_is_read() -> None:
    features = read_cpu_features()
    assert features.arch in ("x86_64", "arm64") or features.source == "unknown"
    if features.source == "/proc/cpuinfo":
        text = Path("/proc/cpuinfo").read_text()
        for flag in ("avx512_bf16", "amx_bf16", "bf16"):
            if f" {flag} " in text.replace("\n", " ") + " ":
                assert flag in features.flags


# ----------------------------------------------------------------------------- cores


def test_cpu_lists_and_quotas() -> None:
    assert parse_cpu_list("0-3,8,10-11\n") == {0, 1, 2, 3, 8, 10, 11}
    assert parse_cpu_max("max 100000\n") is None
    assert parse_cpu_max("150000 100000") == 1.5
    assert parse_cpu_max("garbage") is None


def test_hyperthreads_count_once() -> None:
    # 4 cores x 2 threads, Intel numbering: CPU n and n+4 share a core.
    siblings = {c: f"{c % 4},{c % 4 + 4}" for c in range(8)}
    cores = group_cores(set(range(8)), siblings.get)
    assert len(cores) == 4 and Topology(cores).physical_cores() == 4
    # Pinned to CPUs 0, 4 (one core's two threads) and 1: two cores.
    assert Topology(group_cores({0, 4, 1}, siblings.get)).physical_cores() == 2
    # No sibling information: each CPU its own core.
    assert Topology(group_cores({0, 1, 2}, {}.get)).physical_cores() == 3


def test_a_cgroup_quota_caps_the_threads() -> None:
    cores = tuple(frozenset({i}) for i in range(16))
    assert Topology(cores, quota=2.5).physical_cores() == 2
    assert Topology(cores, quota=0.5).physical_cores() == 1
    assert Topology(cores, quota=None).physical_cores() == 16


def test_topology_from_a_fake_sysfs(tmp_path: Path) -> None:
    for cpu in os.sched_getaffinity(0):
        topo = tmp_path / f"devices/system/cpu/cpu{cpu}/topology"
        topo.mkdir(parents=True)
        topo.joinpath("core_cpus_list").write_text("0-63\n")  # all one core
    (tmp_path / "fs/cgroup").mkdir(parents=True)
    (tmp_path / "fs/cgroup/cpu.max").write_text("max 100000\n")
    t = read_topology(tmp_path)
    assert t.physical_cores() == 1 and t.quota is None


def test_this_machine_has_physical_cores() -> None:
    t = read_topology()
    assert 1 <= t.physical_cores() <= (os.cpu_count() or 1)


def test_features_value() -> None:
    f = CpuFeatures("x86_64", frozenset({"amx_bf16"}), "test")
    assert f.native_bf16() == "amx_bf16"
    assert CpuFeatures("riscv64", frozenset({"bf16"}), "test").native_bf16() is None
