"""Folders on disk as documents: which files to read, and their text (for `localrank index` and
watched folders).

Which files: the include globs (by default, what a notes folder and a code repository hold:
`NOTES_INCLUDE` + `CODE_INCLUDE`), minus the exclude globs (`DEFAULT_EXCLUDE`: lock files,
minified bundles), minus what `.gitignore` / `.ignore` files say (git's rules, `pathspec`; off
with `ignore_files=False`), minus folders no one wants indexed (`.git`, `node_modules`, virtual
environments, caches).

Their text: UTF-8 text and code as they are; PDF text page by page (`pypdf`), pages joined by a
form feed so chunks know their page; HTML as text without markup (`selectolax`, a maintained
HTML5 parser on the Lexbor engine, wheels for every platform), headings kept as Markdown
headings so chunks still break at them. A file that cannot be read is reported and skipped.

A file's document id is its absolute path (under the folder's resolved path): unique within a
collection whatever folders are indexed into it (notes/a.md and work/a.md stay two documents).
Its metadata says where it came from: `path` (relative to the indexed folder), `root` (that
folder) and `format`.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import pathspec
from selectolax.lexbor import LexborHTMLParser

from localrank.collections.documents import (
    DEFAULT_MAX_DOCUMENT_BYTES,
    DocumentIn,
    check_not_binary,
    check_text,
)
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

FORMATS = {
    ".pdf": "pdf",
    ".html": "html",
    ".htm": "html",
    ".md": "markdown",
    ".markdown": "markdown",
    ".mdx": "markdown",
}
_TEXT_SUFFIXES = {".txt", ".text", ".rst", ".org", ".adoc", ".asciidoc", ".tex"}


def file_format(path: Path) -> str:
    """markdown, text, pdf, html or code (by suffix)."""
    suffix = path.suffix.lower()
    if suffix in FORMATS:
        return FORMATS[suffix]
    return "text" if suffix in _TEXT_SUFFIXES else "code"


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


_BLOCKS = (
    "p,div,section,article,main,header,footer,nav,aside,blockquote,pre,table,tr,ul,ol,dl,dt,dd,"
    "figure,figcaption,form,fieldset,address,details,summary,hr"
)
_DROP = "script,style,noscript,template,svg,canvas,iframe,object,head"
_SPACES = re.compile(r"[ \t\u00a0]+")
_BLANK_LINES = re.compile(r"\n{3,}")


def html_text(raw: bytes | str) -> str:
    """The text of an HTML page without markup: scripts, styles and the head dropped, blocks on
    their own lines, headings as Markdown headings (so chunks break at them), list items as
    `- ` lines; the title first."""
    tree = LexborHTMLParser(raw)
    title = tree.css_first("title")
    title_text = title.text(strip=True) if title is not None else ""
    for node in tree.css(_DROP):
        node.decompose()
    root = tree.body or tree.root
    if root is None:
        return title_text
    for level in range(1, 7):
        for node in root.css(f"h{level}"):
            node.insert_before("\n\n" + "#" * level + " ")
            node.insert_after("\n\n")
    for node in root.css("li"):
        node.insert_before("\n- ")
    for node in root.css("br"):
        node.insert_before("\n")
    for node in root.css(_BLOCKS):
        node.insert_before("\n\n")
        node.insert_after("\n\n")
    body = root.text(separator="")
    lines = [_SPACES.sub(" ", line).strip() for line in body.splitlines()]
    text = _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()
    if title_text and not text.startswith("# "):
        text = f"# {title_text}\n\n{text}" if text else title_text
    return text


def pdf_text(path: Path) -> str:
    """A PDF's text, page by page, pages separated by a form feed (the chunker counts pages by
    them, so citations carry page numbers)."""
    # Imported on the first PDF: pypdf takes ~0.13 s to import, a tenth of the daemon's start.
    import pypdf

    try:
        reader = pypdf.PdfReader(path)
        if reader.is_encrypted and not reader.decrypt(""):
            raise LocalrankError("the PDF is encrypted")
        pages = [(page.extract_text() or "").replace("\f", " ") for page in reader.pages]
    except LocalrankError:
        raise
    except Exception as exc:  # pypdf raises many types for damaged files
        raise LocalrankError(f"cannot read the PDF: {type(exc).__name__}: {exc}") from exc
    if not any(p.strip() for p in pages):
        raise LocalrankError("the PDF has no extractable text (a scan without OCR?)")
    return "\f".join(pages)


def read_text(path: Path, max_bytes: int) -> tuple[str, str]:
    """(text, format) of one file; raises OSError or LocalrankError saying why it cannot be
    read."""
    fmt = file_format(path)
    size = path.stat().st_size
    # PDFs carry much more than their text; any other file over the limit is refused unread.
    if fmt != "pdf" and size > max_bytes:
        raise LocalrankError(
            f"{size / 1e6:.1f} MB is over the {max_bytes / 1e6:.1f} MB limit per document"
        )
    if fmt == "pdf":
        return pdf_text(path), fmt
    raw = path.read_bytes()
    if fmt == "html":
        return html_text(raw), fmt
    try:
        return raw.decode("utf-8"), fmt
    except UnicodeDecodeError as exc:
        raise LocalrankError(f"not UTF-8 text (byte {exc.start})") from exc


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

    def files(self, under: Path | None = None) -> Iterator[Path]:
        """The wanted files under the root (or under `under`, a folder inside it), sorted."""
        if self.single_file:
            if under is None:
                yield self.root
            return
        start = Path(os.path.abspath(under)) if under is not None else self.root
        if start != self.root and not self.wanted(start, is_dir=True):
            return
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
                yield path

    def read(self, path: Path) -> DocumentIn:
        """One file as a document; raises OSError or LocalrankError saying why it cannot be."""
        path = Path(os.path.abspath(path))
        doc_id = self.doc_id(path)
        text, fmt = read_text(path, self.max_bytes)
        check_text(doc_id, text, self.max_bytes)
        check_not_binary(doc_id, text)
        metadata = {
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
