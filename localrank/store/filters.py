"""Metadata filters: `{"key": value}` (equality) or `{"key": [v1, v2]}` (any of), ANDed.

Each document's top-level metadata scalars (and the elements of top-level lists) are stored as
rows of `doc_meta`, so a filter resolves to a set of document row ids through an index; the
vector scan and the FTS query then run over those documents only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import apsw
import numpy as np

from localrank.errors import InvalidInput

Scalar = str | int | float
MAX_FILTER_KEYS = 32
MAX_FILTER_VALUES = 1024


@dataclass(frozen=True)
class Filter:
    """A validated filter: every (key, allowed values) pair must match."""

    terms: tuple[tuple[str, tuple[Scalar, ...]], ...]


def _scalar(value: Any) -> Scalar | None:
    # JSON booleans are stored as 0/1 (SQLite has no boolean), so true matches 1.
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (str, int, float)):
        return value
    return None


def parse_filter(raw: Any) -> Filter | None:
    """Validate a request's `filter`; None or {} means no filter. Raises InvalidInput."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise InvalidInput("filter must be an object of metadata key -> value", param="filter")
    if len(raw) > MAX_FILTER_KEYS:
        raise InvalidInput(f"filter has more than {MAX_FILTER_KEYS} keys", param="filter")
    terms: list[tuple[str, tuple[Scalar, ...]]] = []
    for key, value in raw.items():
        if not isinstance(key, str) or not key:
            raise InvalidInput("filter keys must be non-empty strings", param="filter")
        values = value if isinstance(value, list) else [value]
        if not values or len(values) > MAX_FILTER_VALUES:
            raise InvalidInput(
                f"filter[{key!r}] must list 1..{MAX_FILTER_VALUES} values", param="filter"
            )
        converted: list[Scalar] = []
        for v in values:
            s = _scalar(v)
            if s is None:
                raise InvalidInput(
                    f"filter[{key!r}]: values must be strings, numbers or booleans, "
                    f"not {type(v).__name__}",
                    param="filter",
                )
            converted.append(s)
        terms.append((key, tuple(converted)))
    return Filter(tuple(terms)) if terms else None


def metadata_rows(metadata: Mapping[str, Any]) -> list[tuple[str, Scalar]]:
    """The (key, value) rows that make a document findable by `parse_filter` filters."""
    rows: list[tuple[str, Scalar]] = []
    for key, value in metadata.items():
        for v in value if isinstance(value, list) else [value]:
            s = _scalar(v)
            if s is not None:
                rows.append((key, s))
    return rows


def allowed_documents(conn: apsw.Connection, collection_id: int, flt: Filter) -> np.ndarray:
    """Sorted document row ids matching every term of the filter."""
    result: set[int] | None = None
    for key, values in flt.terms:
        docs: set[int] = set()
        for v in values:
            docs.update(
                row[0]
                for row in conn.execute(
                    "SELECT doc FROM doc_meta WHERE collection_id = ? AND key = ? AND value = ?",
                    (collection_id, key, v),
                )
            )
        result = docs if result is None else result & docs
        if not result:
            break
    return np.array(sorted(result or ()), dtype=np.int64)
