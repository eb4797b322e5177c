"""The Makefile's two installs, as make would run them from a fresh clone (`make -n -B`: every
recipe printed, nothing run): `make serve` installs the runtime only, torch pinned first;
`make test` adds the dev extra on top of the same runtime install, and so does every benchmark
target, which runs a module of bench/ (`python -m bench.<name>`)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def recipe(target: str) -> list[str]:
    make = shutil.which("make")
    if make is None:
        pytest.fail("make is not installed: the README's set-up needs it")
    # Run from `make test`, make's variables would make this make a sub-make ("make[1]:
    # Entering directory" among the recipe's lines): it runs as from a shell.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    out = subprocess.run(
        [make, "--no-print-directory", "-n", "-B", target],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def test_serve_installs_the_runtime_only_with_torch_pinned_first():
    lines = recipe("serve")
    torch = lines.index(".venv/bin/pip install --quiet -c constraints.txt torch")
    package = lines.index(".venv/bin/pip install --quiet -c constraints.txt -e .")
    assert torch < package < lines.index(".venv/bin/localrank serve")
    assert not any("[dev]" in line for line in lines)


def test_test_adds_the_dev_extra_to_the_runtime_install():
    lines = recipe("test")
    runtime = lines.index(".venv/bin/pip install --quiet -c constraints.txt -e .")
    dev = lines.index(".venv/bin/pip install --quiet -c constraints.txt -e '.[dev]'")
    pytest_run = next(i for i, line in enumerate(lines) if "-m pytest" in line)
    assert runtime < dev < pytest_run
    assert sum("venv .venv" in line for line in lines) == 1  # one venv for both installs


BENCH_TARGETS = (
    "bench",
    "bench-default",
    "bench-engine",
    "bench-search",
    "bench-pg",
    "bench-cli",
    "bench-rerank",
    "bench-watch",
    "soak",
)


@pytest.mark.parametrize("target", BENCH_TARGETS)
def test_bench_targets_run_a_bench_module_on_the_dev_install(target: str) -> None:
    lines = recipe(target)
    dev = lines.index(".venv/bin/pip install --quiet -c constraints.txt -e '.[dev]'")
    command = lines[-1].split()
    assert dev < len(lines) - 1
    assert command[:2] == [".venv/bin/python", "-m"] and command[2].startswith("bench.")
    module = ROOT.joinpath(*command[2].split("."))
    assert module.with_suffix(".py").is_file() or (module / "__main__.py").is_file(), command
