"""Folders on disk as documents: which files to read, and their text (for `localrank index` and
watched folders).

Which files: the include globs (by default, what a notes folder and a code repository hold:
`NOTES_INCLUDE` + `CODE_INCLUDE`), minus the exclude globs (`DEFAULT_EXCLUDE`: lock files,
minified bundles), minus what `.gitignore` / `.ignore` files say (git's rules, `pathspec`; off
with `ignore_files=False`), minus folders no one wants indexed (`.git`, `node_modules`, virtual
environments, caches). Only regular files are read (a symlink to one too): devices, FIFOs and
sockets are left out unread, and directory symlinks are not followed (what lies behind one is
not part of the folder), the same for `localrank index`, a watch and MCP's `index_folder`.

Their text: `formats` (UTF-8 text and code, PDF page by page, HTML without markup). A file that
cannot be read is reported and skipped.

A file's document id is its absolute path (under the folder's resolved path): unique within a
collection whatever folders are indexed into it (notes/a.md and work/a.md stay two documents).
Its metadata says where it came from: `path` (relative to the indexed folder), `root` (that
folder) and `format`.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import pathspec

from localrank.collections.documents import (
    DEFAULT_MAX_DOCUMENT_BYTES,
    DocumentIn,
    check_not_binary,
    check_text,
)
from localrank.collections.formats import NotRegularFile, read_text
from localrank.declare import Convert, Len, arg, parse
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
# A notes folder: Markdown, plain text, reStructuredText, Org, AsciiDoc, LaTeX, PDF and HTML.
NOTES_INCLUDE = (
    "*.md",
    "*.markdown",
    "*.mdx",
    "*.txt",
    "*.text",
    "*.rst",
    "*.org",
    "*.adoc",
    "*.asciidoc",
    "*.tex",
    "*.pdf",
    "*.html",
    "*.htm",
)
# A code repository: source files of the common languages, build files and configuration.
CODE_INCLUDE = (
    "*.py",
    "*.pyi",
    "*.ipynb",
    "*.js",
    "*.jsx",
    "*.mjs",
    "*.cjs",
    "*.ts",
    "*.tsx",
    "*.vue",
    "*.svelte",
    "*.css",
    "*.scss",
    "*.go",
    "*.rs",
    "*.java",
    "*.kt",
    "*.kts",
    "*.scala",
    "*.swift",
    "*.m",
    "*.c",
    "*.h",
    "*.cc",
    "*.cpp",
    "*.cxx",
    "*.hpp",
    "*.cs",
    "*.fs",
    "*.rb",
    "*.php",
    "*.pl",
    "*.lua",
    "*.r",
    "*.jl",
    "*.ex",
    "*.exs",
    "*.erl",
    "*.hs",
    "*.ml",
    "*.clj",
    "*.dart",
    "*.zig",
    "*.sh",
    "*.bash",
    "*.zsh",
    "*.fish",
    "*.ps1",
    "*.sql",
    "*.proto",
    "*.graphql",
    "*.tf",
    "*.toml",
    "*.yaml",
    "*.yml",
    "*.ini",
    "*.cfg",
    "Dockerfile",
    "Makefile",
    "CMakeLists.txt",
)
DEFAULT_INCLUDE = NOTES_INCLUDE + CODE_INCLUDE
# Generated files that match the globs above but are noise in a search index.
DEFAULT_EXCLUDE = ("*.min.js", "*.min.css", "*.map", "*.lock", "*-lock.yaml", "*.generated.*")
IGNORE_FILES = (".gitignore", ".ignore")

Glob = Annotated[str, Len(1, message="{name} must be a glob, not empty")]


def with_default_excludes(globs: tuple[str, ...]) -> tuple[str, ...]:
    """Excludes as given add to DEFAULT_EXCLUDE."""
    return (*DEFAULT_EXCLUDE, *(g for g in globs if g not in DEFAULT_EXCLUDE))


@dataclass(frozen=True)
class FolderOptions:
    """Which files of a folder become documents (also what a watch remembers)."""

    include: tuple[Glob, ...] = arg(
        "Globs of files to read (default: notes and code files).", default=DEFAULT_INCLUDE
    )
    exclude: tuple[Glob, ...] = arg(
        "Globs of files to leave out, besides lock and minified files.",
        Convert(with_default_excludes),
        default=DEFAULT_EXCLUDE,
    )
    ignore_files: bool = arg("Honour .gitignore and .ignore files.", default=True)

    def to_dict(self) -> dict[str, Any]:
        return {
            "include": list(self.include),
            "exclude": list(self.exclude),
            "ignore_files": self.ignore_files,
        }

    @classmethod
    def from_dict(cls, raw: Any) -> FolderOptions:
        """Options as an API request or a stored watch gives them (missing keys: defaults;
        `exclude` adds to DEFAULT_EXCLUDE); InvalidInput naming the field that is wrong."""
        return cls() if raw is None else parse(cls, raw, what="folder options")

    @property
    def options(self) -> FolderOptions:
        """Just the folder options (of a request that extends them)."""
        return FolderOptions(self.include, self.exclude, self.ignore_files)


@dataclass(frozen=True)
class FolderScan:
    """The documents read from a folder, and the files skipped with why."""

    documents: list[DocumentIn]
    skipped: list[str] = field(default_factory=list)
    # Files gone (or no longer regular files) by the time they were read: not an error.
    vanished: list[Path] = field(default_factory=list)


def _matches(name: str, rel: str, globs: Sequence[str]) -> bool:
    return any(fnmatch.fnmatch(name, g) or fnmatch.fnmatch(rel, g) for g in globs)


class IgnoreRules:
    """`.gitignore` / `.ignore` files as git applies them: each file's patterns are relative to
    its folder, a deeper file overrides a shallower one, negation (`!pattern`) re-includes, and
    a folder that is ignored is not entered. Files above `root` count up to the top of the git
    repository `root` is in (with `.git/info/exclude`)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.top = self._repository_top(root)
        self._specs: dict[Path, pathspec.GitIgnoreSpec | None] = {}

    @staticmethod
    def _repository_top(root: Path) -> Path:
        for folder in (root, *root.parents):
            if (folder / ".git").exists():
                return folder
        return root

    def _spec(self, folder: Path) -> pathspec.GitIgnoreSpec | None:
        if folder not in self._specs:
            lines: list[str] = []
            names = [*IGNORE_FILES]
            if folder == self.top:
                names.append(".git/info/exclude")
            for name in names:
                try:
                    lines.extend((folder / name).read_text(encoding="utf-8").splitlines())
                except (OSError, UnicodeDecodeError):
                    continue
            self._specs[folder] = pathspec.GitIgnoreSpec.from_lines(lines) if lines else None
        return self._specs[folder]

    def forget(self, folder: Path | None = None) -> None:
        """Drop cached rules (an ignore file changed): all of them, or one folder's."""
        if folder is None:
            self._specs.clear()
        else:
            self._specs.pop(folder, None)

    def ignored(self, path: Path, *, is_dir: bool) -> bool:
        """Whether the rules ignore `path` (which must lie under the repository top)."""
        try:
            rel_parts = path.relative_to(self.top).parts
        except ValueError:
            return False
        decision = False
        folder = self.top
        for depth in range(len(rel_parts)):
            spec = self._spec(folder)
            if spec is not None:
                rel = "/".join(rel_parts[depth:]) + ("/" if is_dir else "")
                result = spec.check_file(rel)
                if result.include is not None:
                    decision = bool(result.include)
            folder = folder / rel_parts[depth]
        return decision

    def ignored_with_parents(self, path: Path, *, is_dir: bool) -> bool:
        """Like `ignored`, but also true when a folder above `path` (below the root) is."""
        folder = path.parent
        while folder != self.root and self.root in folder.parents:
            if self.ignored(folder, is_dir=True):
                return True
            folder = folder.parent
        return self.ignored(path, is_dir=is_dir)


class FolderReader:
    """Reads the wanted files of one folder (or one file) as documents."""

    def __init__(
        self,
        root: Path,
        options: FolderOptions | None = None,
        max_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES,
    ) -> None:
        # Resolved once (symlinks in the folder's own path, /tmp -> /private/tmp on macOS): the
        # ids of its files and the paths the file watcher reports then agree.
        self.root = Path(root).expanduser().resolve()
        self.options = options or FolderOptions()
        self.max_bytes = max_bytes
        self.single_file = self.root.is_file()
        self.base = self.root.parent if self.single_file else self.root
        self.rules = IgnoreRules(self.base) if self.options.ignore_files else None

    def doc_id(self, path: Path) -> str:
        """The document id of a file: its absolute path (POSIX separators)."""
        return Path(os.path.abspath(path)).as_posix()

    def wanted(self, path: Path, *, is_dir: bool = False) -> bool:
        """Whether `path` (a file, or with is_dir a folder) is indexed under these options."""
        path = Path(os.path.abspath(path))
        if self.single_file:
            return path == self.root
        if path != self.root and self.root not in path.parents:
            return False
        if not self.inside(path if is_dir else path.parent):
            return False
        rel = path.relative_to(self.root)
        if any(part in IGNORED_DIRS for part in (rel.parts if is_dir else rel.parts[:-1])):
            return False
        if self.rules is not None and self.rules.ignored_with_parents(path, is_dir=is_dir):
            return False
        if is_dir:
            return True
        name, rel_text = path.name, rel.as_posix()
        return _matches(name, rel_text, self.options.include) and not _matches(
            name, rel_text, self.options.exclude
        )

    def inside(self, folder: Path) -> bool:
        """Whether `folder` (the root or below it) is reached without a directory symlink:
        directory symlinks are not followed (`ln -s .. up` would walk the parent, `ln -s .
        self` everything twice), so what lies behind one is not part of the folder."""
        return os.path.realpath(folder) == str(folder)

    def canonical(self, path: str | Path) -> Path | None:
        """The path under the root that `path` names with its folders' symlinks resolved, or
        None when it lies outside. A native watcher follows directory symlinks and may report
        a file of the folder under a symlinked alias (`up/notes/a.md` for `a.md`)."""
        path = Path(os.path.abspath(path))
        real = Path(os.path.realpath(path.parent)) / path.name
        if real == self.root or self.root in real.parents:
            return real
        return None

    def files(self, under: Path | None = None) -> Iterator[Path]:
        """The wanted files under the root (or under `under`, a folder inside it), sorted."""
        if self.single_file:
            if under is None:
                yield self.root
            return
        start = Path(os.path.abspath(under)) if under is not None else self.root
        if start != self.root and not self.wanted(start, is_dir=True):
            return
        # os.walk does not follow directory symlinks below `start` (and `start` is no link).
        for dirpath, dirnames, filenames in os.walk(start):
            folder = Path(dirpath)
            keep = []
            for d in sorted(dirnames):
                if d in IGNORED_DIRS:
                    continue
                if self.rules is not None and self.rules.ignored(folder / d, is_dir=True):
                    continue
                keep.append(d)
            dirnames[:] = keep
            for name in sorted(filenames):
                path = folder / name
                rel = path.relative_to(self.root).as_posix()
                if not _matches(name, rel, self.options.include):
                    continue
                if _matches(name, rel, self.options.exclude):
                    continue
                if self.rules is not None and self.rules.ignored(path, is_dir=False):
                    continue
                # Devices, FIFOs and sockets are not documents: left out unread. A link that
                # cannot be followed (dangling, a loop) is read, to be reported.
                try:
                    if not stat.S_ISREG(os.stat(path).st_mode):
                        continue
                except OSError:
                    pass
                yield path

    def read(self, path: Path) -> DocumentIn:
        """One file as a document; raises OSError or LocalrankError saying why it cannot be."""
        path = Path(os.path.abspath(path))
        doc_id = self.doc_id(path)
        text, fmt = read_text(path, self.max_bytes)
        check_text(doc_id, text, self.max_bytes)
        check_not_binary(doc_id, text)
        metadata: dict[str, Any] = {
            "path": path.relative_to(self.base).as_posix(),
            "root": self.base.as_posix(),
            "format": fmt,
        }
        return DocumentIn(doc_id, text, metadata, doc_id)

    def read_all(self, paths: Iterable[Path]) -> FolderScan:
        """Read `paths`; a file that cannot be read is listed in `skipped` with why."""
        scan = FolderScan([])
        for path in paths:
            try:
                scan.documents.append(self.read(path))
            except (OSError, LocalrankError) as exc:
                dangling = isinstance(exc, FileNotFoundError) and os.path.lexists(path)
                if isinstance(exc, (FileNotFoundError, NotRegularFile)) and not dangling:
                    scan.vanished.append(path)
                    continue
                where = self.doc_id(path)
                scan.skipped.append(f"{where}: {getattr(exc, 'message', None) or exc}")
        return scan

    def scan(self) -> FolderScan:
        """Every wanted file of the folder, read."""
        return self.read_all(self.files())


def read_folder(
    root: Path,
    options: FolderOptions | None = None,
    max_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES,
) -> FolderScan:
    """Each readable wanted file under `root` as a document whose id is its absolute path."""
    return FolderReader(root, options, max_bytes).scan()
