"""What the processor offers, read from the operating system: instruction-set features (for the
bfloat16 decision) and the physical cores this process may run on (for thread pools).

Framework-free. Reading is separate from deciding, so the decisions can be unit-tested with the
descriptions of machines we do not have (`CpuFeatures` and `Topology` built by hand).
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# Features that make a CPU compute bfloat16 matmuls natively, by architecture, best first.
# x86: AMX tiles (Sapphire Rapids+), AVX512-BF16 dot products (Cooper Lake, Zen 4+).
# arm64: FEAT_BF16 (BFDOT/BFMMLA: Apple M2+, Graviton 3+, Neoverse V1/N2+); Linux names it
# "bf16" in /proc/cpuinfo, macOS "FEAT_BF16" under sysctl hw.optional.arm.
BF16_FEATURES = {
    "x86_64": ("amx_bf16", "avx512_bf16"),
    "arm64": ("bf16", "FEAT_BF16"),
}
_ARCH = {"amd64": "x86_64", "x86_64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}


@dataclass(frozen=True)
class CpuFeatures:
    """A processor's architecture and feature flags, and where they were read from."""

    arch: str  # "x86_64", "arm64" or what platform.machine() said
    flags: frozenset[str]
    source: str  # "/proc/cpuinfo", "sysctl", or "unknown"

    def native_bf16(self) -> str | None:
        """The feature that gives native bfloat16 matmuls, or None."""
        return next((f for f in BF16_FEATURES.get(self.arch, ()) if f in self.flags), None)

    def avx2_fma(self) -> bool:
        """Whether int8's kernel (engine/torch/q8.c, compiled for AVX2 and FMA) may run here.
        macOS lists AVX2 among leaf-7 features and FMA elsewhere: every AVX2 CPU has FMA."""
        if self.arch != "x86_64" or "avx2" not in self.flags:
            return False
        return "fma" in self.flags or self.source == "sysctl"


def parse_cpuinfo(text: str, machine: str) -> CpuFeatures:
    """Linux /proc/cpuinfo: x86 lists `flags`, arm64 lists `Features` (first CPU is enough)."""
    arch = _ARCH.get(machine.lower(), machine.lower())
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return CpuFeatures(arch, frozenset(value.split()), "/proc/cpuinfo")
    return CpuFeatures(arch, frozenset(), "/proc/cpuinfo")


Sysctl = Callable[[str], str | None]


def run_sysctl(name: str) -> str | None:
    """`sysctl -n name`, or None when it does not exist (or there is no sysctl)."""
    try:
        out = subprocess.run(
            ["sysctl", "-n", name], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def macos_features(machine: str, sysctl: Sysctl = run_sysctl) -> CpuFeatures:
    """macOS: arm64 features are hw.optional.arm.FEAT_* = 1; Intel Macs list leaf-7 flags."""
    arch = _ARCH.get(machine.lower(), machine.lower())
    flags: set[str] = set()
    if arch == "arm64":
        if sysctl("hw.optional.arm.FEAT_BF16") == "1":
            flags.add("FEAT_BF16")
    else:
        leaf7 = (sysctl("machdep.cpu.leaf7_features") or "").lower().split()
        flags.update("avx512_bf16" if f == "avx512bf16" else f for f in leaf7)
    return CpuFeatures(arch, frozenset(flags), "sysctl")


def read_cpu_features() -> CpuFeatures:
    """This machine's processor features (empty when the OS does not say)."""
    machine = platform.machine()
    system = platform.system()
    if system == "Linux":
        try:
            return parse_cpuinfo(Path("/proc/cpuinfo").read_text(errors="replace"), machine)
        except OSError:
            pass
    elif system == "Darwin":
        return macos_features(machine)
    return CpuFeatures(_ARCH.get(machine.lower(), machine.lower()), frozenset(), "unknown")


# ----------------------------------------------------------------------------- cores


@dataclass(frozen=True)
class Topology:
    """The CPUs this process may use, grouped by physical core, and any cgroup CPU quota."""

    cores: tuple[frozenset[int], ...]  # one set of logical CPUs (hyperthreads) per core
    quota: float | None = None  # CPUs' worth of time the cgroup allows (cpu.max), None: no limit
    source: str = "sysfs"

    def physical_cores(self) -> int:
        """Cores to size a compute pool to: one thread per physical core, within the quota."""
        n = max(1, len(self.cores))
        if self.quota is not None:
            n = min(n, max(1, math.floor(self.quota)))
        return n


def group_cores(
    cpus: set[int], siblings: Callable[[int], str | None]
) -> tuple[frozenset[int], ...]:
    """Group the allowed logical CPUs by the sibling list sysfs gives for each ("0-1", "0,8")."""
    groups: dict[frozenset[int], frozenset[int]] = {}
    for cpu in sorted(cpus):
        text = siblings(cpu)
        core = parse_cpu_list(text) if text else {cpu}
        key = frozenset(core)
        groups[key] = groups.get(key, frozenset()) | {cpu}
    return tuple(groups.values())


def parse_cpu_list(text: str) -> set[int]:
    """A kernel CPU list such as "0-3,8,10-11"."""
    out: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def parse_cpu_max(text: str) -> float | None:
    """cgroup v2 cpu.max: "max 100000" (no limit) or "QUOTA PERIOD"."""
    parts = text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        return int(parts[0]) / int(parts[1])
    except (ValueError, ZeroDivisionError):
        return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def read_topology(sys_root: Path = Path("/sys")) -> Topology:
    """Physical cores among the CPUs this process may run on (Linux sysfs; elsewhere the
    OS's physical core count)."""
    if hasattr(os, "sched_getaffinity") and (sys_root / "devices/system/cpu").is_dir():
        cpus = set(os.sched_getaffinity(0))
        base = sys_root / "devices/system/cpu"

        def siblings(cpu: int) -> str | None:
            topo = base / f"cpu{cpu}" / "topology"
            return _read(topo / "core_cpus_list") or _read(topo / "thread_siblings_list")

        cpu_max = _read(sys_root / "fs/cgroup/cpu.max")
        return Topology(group_cores(cpus, siblings), parse_cpu_max(cpu_max) if cpu_max else None)
    if platform.system() == "Darwin":
        # Apple Silicon: the performance cores; Intel Macs: all physical cores.
        for name in ("hw.perflevel0.physicalcpu", "hw.physicalcpu"):
            value = run_sysctl(name)
            if value and value.isdigit():
                n = int(value)
                return Topology(tuple(frozenset({i}) for i in range(n)), source=f"sysctl {name}")
    n = os.cpu_count() or 1
    return Topology(tuple(frozenset({i}) for i in range(n)), source="os.cpu_count")
