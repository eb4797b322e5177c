"""The text of one file, and which files may be read at all (for the folder reader).

Only regular files are read (a symlink to one too). A device, FIFO or socket is refused before
it is opened and again after (it may have been swapped in between); the open is non-blocking,
so a FIFO without a writer cannot hang it; and no more than the per-document limit plus one
byte is read, whatever size a file reports (files under /proc say 0).

Formats: UTF-8 text and code as they are; PDF text page by page (`pypdf`), pages joined by a
form feed so chunks know their page; HTML as text without markup (`selectolax`, a maintained
HTML5 parser on the Lexbor engine, wheels for every platform), headings kept as Markdown
headings so chunks still break at them.
"""

from __future__ import annotations

import io
import os
import re
import stat
from pathlib import Path
from typing import BinaryIO

from selectolax.lexbor import LexborHTMLParser

from localrank.errors import LocalrankError

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


def pdf_text(stream: BinaryIO) -> str:
    """A PDF's text, page by page, pages separated by a form feed (the chunker counts pages by
    them, so citations carry page numbers)."""
    # Imported on the first PDF: pypdf takes ~0.13 s to import, a tenth of the daemon's start.
    import pypdf

    try:
        reader = pypdf.PdfReader(stream)
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


_KINDS = {
    stat.S_IFDIR: "a folder",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}
_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_CLOEXEC", 0)
)


def is_regular_file(path: str | Path) -> bool:
    """Whether `path` is (or links to) a regular file: the only kind of file ever read."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


class NotRegularFile(LocalrankError):
    """A path that is not a regular file was to be read (it changed kind since it was listed):
    never leaves this module's callers as an error of its own, they skip the path."""


def _not_regular(mode: int) -> NotRegularFile:
    kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
    return NotRegularFile(f"{kind}: only regular files are read")


def open_regular(path: Path) -> io.FileIO:
    """`path` opened for reading if it is a regular file. A device, FIFO or socket is refused
    before it is opened, and again after (it may have been swapped in between): the open is
    non-blocking, so a FIFO without a writer cannot hang it."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise _not_regular(mode)
    fd = os.open(path, _OPEN_FLAGS)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _not_regular(mode)
        return io.FileIO(fd, "rb")  # unbuffered: each read asks for what it takes
    except BaseException:
        os.close(fd)
        raise


def read_at_most(f: io.FileIO, limit: int) -> bytes:
    """Up to `limit` bytes of `f` (an unbuffered file): never more, whatever the file says of
    its size (a file in /proc says 0)."""
    parts: list[bytes] = []
    left = limit
    while left > 0:
        part = f.read(min(left, 1 << 20))
        if not part:  # EOF (None, "would block", cannot come from a regular file)
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _over_limit(what: str, max_bytes: int) -> LocalrankError:
    return LocalrankError(f"{what} over the {max_bytes / 1e6:.1f} MB limit per document")


def read_text(path: Path, max_bytes: int) -> tuple[str, str]:
    """(text, format) of one regular file; raises OSError or LocalrankError saying why it
    cannot be read. At most `max_bytes` + 1 bytes are read of any file but a PDF (a file may
    grow after its size was taken)."""
    fmt = file_format(path)
    with open_regular(path) as f:
        if fmt == "pdf":  # PDFs carry much more than their text: their limit is on the text
            return pdf_text(io.BufferedReader(f)), fmt
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:  # refused unread
            raise _over_limit(f"{size / 1e6:.1f} MB is", max_bytes)
        raw = read_at_most(f, max_bytes + 1)
    if len(raw) > max_bytes:
        raise _over_limit("it holds more than its size says, and is", max_bytes)
    if fmt == "html":
        return html_text(raw), fmt
    try:
        return raw.decode("utf-8"), fmt
    except UnicodeDecodeError as exc:
        raise LocalrankError(f"not UTF-8 text (byte {exc.start})") from exc
