"""Documents as clients submit them, and their validation (shared by the API and the CLI)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Annotated, Any

from localrank.declare import Len, NonBlank, Pattern, arg, kind_of, parse_value, problem
from localrank.errors import InvalidInput, TooLarge

DEFAULT_MAX_DOCUMENT_BYTES = 10 * 1024 * 1024
MAX_DOCUMENT_ID_CHARS = 512


# What a document's text must be, wherever it comes from (a request, a file).
DocumentText = Annotated[
    str,
    NonBlank("{name} has empty text"),
    Pattern(r"^[^\x00]*$", "{name} contains NUL bytes: binary data?"),
]


@dataclass(frozen=True)
class DocumentIn:
    """A document as submitted."""

    id: str = arg(
        "Its id (upserts replace the document with the same id).", Len(1, MAX_DOCUMENT_ID_CHARS)
    )
    text: DocumentText = arg("Its text (chunked and embedded).")
    metadata: dict[str, Any] = arg(
        "Anything; its top-level scalars (and lists of them) can be filtered on.", factory=dict
    )
    source: str | None = arg("Where it came from (a file, a URL): cited with it.", default=None)

    def to_payload(self) -> str:
        return json.dumps(
            {"id": self.id, "text": self.text, "metadata": self.metadata, "source": self.source},
            ensure_ascii=False,
        )

    @classmethod
    def from_payload(cls, payload: str) -> DocumentIn:
        d = json.loads(payload)
        return cls(d["id"], d["text"], d.get("metadata") or {}, d.get("source"))


def content_hash(text: str) -> str:
    """sha256 of the text: equal hashes are never embedded twice."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def check_text(doc_id: str, text: str, max_bytes: int) -> None:
    """Refuse empty text, NUL bytes, lone surrogates and oversized documents with a message
    naming the doc."""
    message = problem(kind_of(DocumentText), f"document {doc_id!r}", text)
    if message is not None:
        raise InvalidInput(message, param="text")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidInput(
            f"document {doc_id!r} is not valid Unicode text (lone surrogate at {exc.start})",
            param="text",
        ) from exc
    if size > max_bytes:
        raise TooLarge(
            f"document {doc_id!r} is {size / 1e6:.1f} MB; the limit is "
            f"{max_bytes / 1e6:.1f} MB per document",
            param="text",
        )


def check_not_binary(doc_id: str, text: str) -> None:
    """Refuse a file's text that looks like binary data decoded as text (many control or
    replacement characters). A client's document is taken as the text it says it is."""
    sample = text[:65536]
    junk = sum(1 for ch in sample if (ord(ch) < 32 and ch not in "\t\n\r\f") or ch == "\ufffd")
    if junk > max(8, len(sample) // 100):
        raise InvalidInput(
            f"document {doc_id!r} looks like binary data ({junk} control or replacement "
            f"characters in its first {len(sample)})",
            param="text",
        )


Documents = Annotated[list[DocumentIn], Len(1, message="documents must be a non-empty list")]


def check_documents(docs: list[DocumentIn], *, max_bytes: int) -> list[DocumentIn]:
    """Documents as declared, checked for what a declaration cannot say (their size). An id
    given twice counts once, with its last document: as if they had been sent one after the
    other."""
    for d in docs:
        check_text(d.id, d.text, max_bytes)
    return list({d.id: d for d in docs}.values())


def parse_documents(raw: Any, *, max_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES) -> list[DocumentIn]:
    """Validate a request's `documents` list; raises InvalidInput / TooLarge."""
    docs: list[DocumentIn] = parse_value(Documents, raw, "documents")
    return check_documents(docs, max_bytes=max_bytes)
