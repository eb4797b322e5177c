"""Documents as clients submit them, and their validation (shared by the API and the CLI)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from localrank.errors import InvalidInput, TooLarge

DEFAULT_MAX_DOCUMENT_BYTES = 10 * 1024 * 1024
MAX_DOCUMENT_ID_CHARS = 512


@dataclass(frozen=True)
class DocumentIn:
    """A document as submitted."""

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str | None = None

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
    """Refuse empty text, binary junk and oversized documents with a message naming the doc."""
    if not text.strip():
        raise InvalidInput(f"document {doc_id!r} has empty text", param="text")
    if "\x00" in text:
        raise InvalidInput(f"document {doc_id!r} contains NUL bytes: binary data?", param="text")
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
    sample = text[:65536]
    junk = sum(1 for ch in sample if (ord(ch) < 32 and ch not in "\t\n\r\f") or ch == "\ufffd")
    if junk > max(8, len(sample) // 100):
        raise InvalidInput(
            f"document {doc_id!r} looks like binary data ({junk} control or replacement "
            f"characters in its first {len(sample)})",
            param="text",
        )


def parse_documents(raw: Any, *, max_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES) -> list[DocumentIn]:
    """Validate a request's `documents` list; raises InvalidInput / TooLarge."""
    if not isinstance(raw, list) or not raw:
        raise InvalidInput("documents must be a non-empty list", param="documents")
    out: list[DocumentIn] = []
    seen: set[str] = set()
    dupes: list[str] = []
    for i, d in enumerate(raw):
        if not isinstance(d, dict):
            raise InvalidInput(f"documents[{i}] must be an object", param="documents")
        doc_id, text = d.get("id"), d.get("text")
        if not isinstance(doc_id, str) or not doc_id or len(doc_id) > MAX_DOCUMENT_ID_CHARS:
            raise InvalidInput(
                f"documents[{i}].id must be a string of 1-{MAX_DOCUMENT_ID_CHARS} characters",
                param="id",
            )
        if not isinstance(text, str):
            raise InvalidInput(f"document {doc_id!r}: text must be a string", param="text")
        metadata = d.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise InvalidInput(f"document {doc_id!r}: metadata must be an object", param="metadata")
        source = d.get("source")
        if source is not None and not isinstance(source, str):
            raise InvalidInput(f"document {doc_id!r}: source must be a string", param="source")
        check_text(doc_id, text, max_bytes)
        if doc_id in seen:
            dupes.append(doc_id)
        seen.add(doc_id)
        out.append(DocumentIn(doc_id, text, metadata, source))
    if dupes:
        raise InvalidInput(
            f"duplicate document ids in one request: {', '.join(sorted(set(dupes))[:10])}",
            param="id",
        )
    return out
