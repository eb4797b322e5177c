"""Folders on disk as documents: which files to read, and their text (for `localrank index`)."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from localrank.collections.documents import DEFAULT_MAX_DOCUMENT_BYTES, DocumentIn, check_text
from localrank.errors import LocalrankError

IGNORED_DIRS = frozenset(
    {
        ".git",
        "node_modules",
        ".venv",
        "venv",
        "__pycache__",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        ".tox",
        ".hg",
        ".svn",
    }
)
DEFAULT_INCLUDE = ("*.md", "*.markdown", "*.txt", "*.rst", "*.org", "*.adoc")


@dataclass(frozen=True)
class FolderScan:
    """The documents read from a folder, and the files skipped with why."""

    documents: list[DocumentIn]
    skipped: list[str] = field(default_factory=list)


def iter_files(root: Path, include: Sequence[str], exclude: Sequence[str]) -> Iterator[Path]:
    """Files under root matching an include glob and no exclude glob, ignored dirs pruned."""
    if root.is_file():
        yield root
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in IGNORED_DIRS)
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if not any(fnmatch.fnmatch(name, g) or fnmatch.fnmatch(rel, g) for g in include):
                continue
            if any(fnmatch.fnmatch(name, g) or fnmatch.fnmatch(rel, g) for g in exclude):
                continue
            yield path


def read_folder(
    root: Path,
    include: Sequence[str] = DEFAULT_INCLUDE,
    exclude: Sequence[str] = (),
    max_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES,
) -> FolderScan:
    """Each readable text file as a document whose id is its path relative to the folder."""
    scan = FolderScan([])
    base = root if root.is_dir() else root.parent
    for path in iter_files(root, include, exclude):
        doc_id = path.relative_to(base).as_posix()
        try:
            text = path.read_text(encoding="utf-8")
            check_text(doc_id, text, max_bytes)
        except (OSError, UnicodeDecodeError, LocalrankError) as exc:
            scan.skipped.append(f"{doc_id}: {getattr(exc, 'message', exc)}")
            continue
        scan.documents.append(DocumentIn(doc_id, text, {"path": doc_id}, str(path.resolve())))
    return scan
