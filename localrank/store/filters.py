"""Metadata filters as a store sees them: `{"key": value}` (equality) or `{"key": [v1, v2]}`
(any of), every key ANDed.

A store indexes each document's top-level metadata scalars (and the elements of top-level lists)
as (key, value) rows, `metadata_rows`, so a filter resolves to a set of documents through an
index; the vector scan and the keyword query then run over those documents only. Requests are
validated into a `Filter` by the application layer (`localrank.collections.search`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

Scalar = str | int | float
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class Filter:
    """A validated filter: every (key, allowed values) pair must match."""

    terms: tuple[tuple[str, tuple[Scalar, ...]], ...]


def as_scalar(value: Any) -> Scalar | None:
    """A metadata value as a filterable scalar, or None when it cannot be filtered on."""
    # JSON booleans are stored as 0/1 (SQLite has no boolean), so true matches 1.
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        # Beyond the stores' 64-bit integers, a number as a float (as JSON readers take it).
        return value if INT64_MIN <= value <= INT64_MAX else float(value)
    if isinstance(value, (str, float)):
        return value
    return None


def metadata_rows(metadata: Mapping[str, Any]) -> list[tuple[str, Scalar]]:
    """The (key, value) rows that make a document findable by filters."""
    rows: list[tuple[str, Scalar]] = []
    for key, value in metadata.items():
        for v in value if isinstance(value, list) else [value]:
            s = as_scalar(v)
            if s is not None:
                rows.append((key, s))
    return rows
