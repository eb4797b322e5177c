"""A known-item evaluation set: labelled queries over a folder of Markdown documents read at run
time (the set names the folder; the documents are never copied into it).

The set is a JSON file:

    {"name": "npm-docs", "folder": "/usr/lib/node_modules/npm/docs/content",
     "include": ["*.md"],
     "queries": [{"id": "q01", "query": "...",
                  "relevant": [{"file": "commands/npm-ci.md", "heading": "Description"}]}]}

A relevant item is a section: a file (a glob over paths relative to the folder) and a heading
(its text without `#`, backticks or link targets; the section runs to the next heading of the
same or a higher level), or a whole file when no heading is given. A search result is relevant
when its chunk, or one of the near-duplicates collapsed into it, overlaps a relevant section.
All relevant sections count as one item: the metrics measure where the first of them comes.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localrank.collections.documents import DocumentIn
from localrank.collections.files import FolderOptions, FolderReader
from localrank.errors import InvalidInput

RELEVANT = "relevant"
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")


def heading_key(text: str) -> str:
    """A heading as judgements name it: no link targets, backticks or emphasis; lower case."""
    return " ".join(_LINK.sub(r"\1", text).replace("`", "").replace("*", "").split()).casefold()


def sections(text: str) -> list[tuple[str, int, int]]:
    """(heading key, char start, char end) of each Markdown section of `text` (headings inside
    fenced code blocks are code, not headings)."""
    found: list[tuple[int, str, int]] = []  # (level, key, start)
    pos = 0
    fenced = False
    for line in text.splitlines(keepends=True):
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced and (m := _HEADING.match(line.rstrip("\n"))):
            found.append((len(m.group(1)), heading_key(m.group(2)), pos))
        pos += len(line)
    out = []
    for i, (level, key, start) in enumerate(found):
        end = next((s for lv, _, s in found[i + 1 :] if lv <= level), len(text))
        out.append((key, start, end))
    return out


@dataclass(frozen=True)
class KnownItemSet:
    """A known-item set with its documents read: spans[query id] are the relevant
    (document id, start, end) character ranges."""

    name: str
    documents: list[DocumentIn]
    queries: dict[str, str]
    spans: dict[str, list[tuple[str, int, int]]]

    def judge(self, qid: str, results: list[dict[str, Any]]) -> tuple[list[str], dict[str, int]]:
        """(item keys in rank order, gains): every relevant result is the one item RELEVANT,
        any other is itself (its chunk id)."""
        spans = self.spans[qid]
        ranked: list[str] = []
        for r in results:
            places = [r["citation"], *r.get("also_in", [])]
            hit = any(
                doc == p["document_id"] and p["char_start"] < end and start < p["char_end"]
                for p in places
                for doc, start, end in spans
            )
            key = RELEVANT if hit else f"chunk:{r['chunk_id']}"
            if key not in ranked:
                ranked.append(key)
        return ranked, {RELEVANT: 1}


def _relevant_spans(
    texts: dict[str, str], relevant: list[dict[str, Any]], where: str
) -> list[tuple[str, int, int]]:
    spans: list[tuple[str, int, int]] = []
    for item in relevant:
        files = [f for f in texts if fnmatch.fnmatchcase(f, str(item["file"]))]
        heading = item.get("heading")
        found = [
            (f, start, end)
            for f in files
            for key, start, end in (sections(texts[f]) if heading else [("", 0, len(texts[f]))])
            if not heading or key == heading_key(str(heading))
        ]
        if not found:
            raise InvalidInput(f"{where}: no section {heading!r} in a file {item['file']!r}")
        spans.extend(found)
    return spans


def load_known_items(path: Path | str, folder: Path | str | None = None) -> KnownItemSet:
    """Read a known-item set and the documents of its folder (`folder` overrides the set's);
    InvalidInput when the set is malformed, the folder is missing or a judgement names a
    section that is not there."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        root = Path(folder or raw["folder"]).expanduser()
        include = tuple(raw.get("include") or ("*.md",))
        queries = {str(q["id"]): str(q["query"]) for q in raw["queries"]}
        judged = {str(q["id"]): list(q["relevant"]) for q in raw["queries"]}
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise InvalidInput(f"{path}: not a known-item set: {exc}") from exc
    if not root.is_dir():
        raise InvalidInput(f"{root} (the documents of {path.name}) is not a folder; pass --docs")
    reader = FolderReader(root, FolderOptions(include=include, ignore_files=False))
    scan = reader.scan()
    # Document ids relative to the folder, as the judgements name the files.
    documents = [
        DocumentIn(Path(d.id).relative_to(reader.root).as_posix(), d.text, d.metadata, d.source)
        for d in scan.documents
    ]
    texts = {d.id: d.text for d in documents}
    spans = {qid: _relevant_spans(texts, rel, f"{path.name} {qid}") for qid, rel in judged.items()}
    return KnownItemSet(str(raw.get("name") or path.stem), documents, queries, spans)
