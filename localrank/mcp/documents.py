"""Reading documents for the MCP tools: line ranges, several documents under a size cap, globs
over their paths."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from typing import Any

from localrank.client import DaemonClient
from localrank.errors import InvalidInput
from localrank.mcp.daemon import DaemonAccess
from localrank.mcp.outputs import Document

PAGE = 1000  # documents listed per request when a glob is matched


def line_range(text: str, start: int | None, end: int | None) -> tuple[str, int, int, int]:
    """(the text of lines start..end, 1-based inclusive, the range used, the line count)."""
    lines = text.splitlines(keepends=True)
    total = len(lines)
    first = start or 1
    last = min(end or total, total)
    if first > total:
        raise InvalidInput(f"line_start {first} is past the end: the document has {total} lines")
    if last < first:
        raise InvalidInput(f"line_end {end} is before line_start {first}")
    return "".join(lines[first - 1 : last]), first, last, total


def document_output(
    name: str, doc: dict[str, Any], text: str, first: int, last: int, total: int
) -> Document:
    return {
        "collection": name,
        "document_id": doc["id"],
        "source": doc.get("source"),
        "metadata": doc.get("metadata", {}),
        "line_start": first,
        "line_end": last,
        "total_lines": total,
        "text": text,
    }


def is_glob(item: str) -> bool:
    return any(ch in item for ch in "*?[")


def glob_matches(pattern: str, doc: dict[str, Any]) -> bool:
    """A glob against a listed document's source path or its path inside the indexed folder."""
    paths = [doc.get("source"), (doc.get("metadata") or {}).get("path")]
    return any(isinstance(p, str) and fnmatch.fnmatchcase(p, pattern) for p in paths)


def listed(access: DaemonAccess, collection: str | None) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every document (without text) of `collection`, or of every collection."""
    names = [collection] if collection else access.call(collection_names)
    for name in names:
        after: str | None = None
        while True:
            page = access.call(lambda c, n=name, a=after: c.documents(n, limit=PAGE, after=a))  # type: ignore[misc]
            for doc in page["documents"]:
                yield name, doc
            after = page.get("next_after")
            if not after:
                break


def cut_at_line(text: str, budget: int) -> str:
    """`text` when it fits in `budget` characters, else its longest prefix of whole lines that
    does (empty when not even its first line does)."""
    if len(text) <= budget:
        return text
    return text[: text.rfind("\n", 0, budget) + 1]


def collection_names(client: DaemonClient) -> list[str]:
    return [c["name"] for c in client.collections()]
