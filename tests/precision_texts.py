"""The texts the reduced-precision tests (bfloat16, int8) compare against the float32 recipe,
and how each kind is embedded by an engine and formatted for the authors' Qwen3 recipe."""

from __future__ import annotations

import numpy as np
from reference import get_detailed_instruct

from localrank.config import DEFAULT_INSTRUCTION
from localrank.engine.core import Engine

DOCUMENTS = [
    "Paris is the capital and largest city of France, on the Seine.",
    "a",
    "Ünïcödé — 日本語のテキスト, emoji 🚀🌍 and Ελληνικά",
    " ".join(f"word{i % 37} and the {i}th thing" for i in range(120)),  # ~600 tokens
    "The mitochondria is the powerhouse of the cell; ATP synthase turns a proton gradient into "
    "chemical energy, one rotation at a time, in every living thing that breathes oxygen.",
    "def f(x):\n    return x * 2  # code, with newlines and indentation\n" * 6,
]
QUERIES = [
    "how tall is the eiffel tower",
    "best pasta recipe with garlic and olive oil",
    "why is the sky blue",
    "capital of france",
]


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def qwen3_kind(engine: Engine, kind: str) -> tuple[np.ndarray, list[str]]:
    """(the engine's vectors of DOCUMENTS or QUERIES, those texts as the authors' Qwen3 recipe
    is given them: queries with the default instruction)."""
    if kind == "documents":
        return engine.embed(DOCUMENTS).vectors, DOCUMENTS
    got = engine.embed(QUERIES, query=True).vectors
    return got, [get_detailed_instruct(DEFAULT_INSTRUCTION, q) for q in QUERIES]
