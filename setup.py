"""The one compiled part: int8's block-matmul kernel (localrank/engine/torch/q8.c), for x86-64
CPUs with AVX2 and FMA. Everything else is in pyproject.toml. Optional: where it cannot be
compiled (no C compiler, another architecture), the package installs without it and `--dtype
int8` says so (the float dtypes are unaffected)."""

import platform
import sys

from setuptools import Extension, setup

X86 = platform.machine().lower() in ("x86_64", "amd64")
ext = []
if X86 and sys.platform != "win32":
    ext.append(
        Extension(
            "localrank.engine.torch._q8",
            ["localrank/engine/torch/q8.c"],
            extra_compile_args=["-O3", "-mavx2", "-mfma", "-std=c11"],
            optional=True,
        )
    )
setup(ext_modules=ext)
