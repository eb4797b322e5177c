"""The suite passes on CPUs without AVX-512 or native bfloat16, whichever CPU runs it.

CI and the machines that build this project change from one run to the next: some have
AVX-512 / AMX / AVX512-BF16, some only AVX2 + FMA. The tests of the precision paths run here
again in a child process whose torch, oneDNN and MKL are held to AVX2 instructions (int8's own
kernel is AVX2 code everywhere): what an AVX2-only laptop has. A test that silently assumed
this machine's features fails here even on a machine that has them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AVX2_ONLY = {
    "ATEN_CPU_CAPABILITY": "avx2",  # torch's own kernels
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN (bfloat16 packing, its matmuls)
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",  # MKL (float32 matmuls), which reads neither of those
}
# The tests whose paths depend on the CPU's instructions (dtype choice, bfloat16, packing).
PRECISION_TESTS = ["tests/test_bf16_parity.py", "tests/test_precision.py", "tests/test_int8.py"]


def run_avx2(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env={**os.environ, **AVX2_ONLY},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_restriction_takes_effect() -> None:
    """Held to AVX2, torch reports AVX2 kernels and oneDNN cannot pack bfloat16 weights (as on
    an AVX2-only CPU), so the run below really exercises that machine's paths."""
    probe = run_avx2(
        "-c",
        "import torch; from localrank.engine.torch.cpu import linears_supported; "
        "print(torch.backends.cpu.get_cpu_capability(), linears_supported())",
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == ["AVX2", "False"], probe.stdout


def test_precision_tests_pass_on_an_avx2_only_cpu() -> None:
    tests = ("-m", "pytest", "-q", "-p", "no:cacheprovider", *PRECISION_TESTS)
    result = run_avx2(*tests, timeout=1500)
    tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
    assert result.returncode == 0, tail
    assert " passed" in result.stdout and "skipped" not in result.stdout, tail
