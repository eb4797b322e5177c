"""Fields several dialects share: query or document, instructions, model names."""

from __future__ import annotations

from typing import Any

from localrank.engine.resolve import canonical_name
from localrank.engine.types import ModelInfo
from localrank.errors import InvalidInput, NotFound
from localrank.serve.http import field

QUERY_TYPES = {"query", "search_query", "queries", "question"}
DOCUMENT_TYPES = {"document", "search_document", "passage", "documents", "passages",
                  "classification", "clustering"}
# Names clients send when they mean "whatever this server runs".
GENERIC_MODEL_NAMES = {"default", "localrank", ""}


def query_mode(body: dict[str, Any], *, default_query: bool = False) -> tuple[bool, str | None]:
    """(is query, instruction) from `input_type` (OpenAI-compatible servers, Cohere), TEI's
    `prompt_name`, or a free `instruction` (which implies a query)."""
    instruction = field(body, "instruction", str)
    kind = field(body, "input_type", str) or field(body, "prompt_name", str)
    if kind is None:
        return (True if instruction is not None else default_query), instruction
    kind = kind.lower()
    if kind in QUERY_TYPES:
        return True, instruction
    if kind in DOCUMENT_TYPES:
        if instruction is not None:
            raise InvalidInput("an instruction applies to queries, not documents",
                               param="instruction")
        return False, None
    raise InvalidInput(f"input_type must be query or document (or search_query / "
                       f"search_document), not {kind!r}", param="input_type")


def check_model(body: dict[str, Any], info: ModelInfo) -> None:
    """A request may name the served model (by id, alias or folder name), or none."""
    name = field(body, "model", str)
    if name is None or name.lower() in GENERIC_MODEL_NAMES:
        return
    served = {info.model_id.lower(), info.model_id.rsplit("/", 1)[-1].lower()}
    if name.lower() in served or canonical_name(name).lower() in served:
        return
    raise NotFound(f"model {name!r} is not served here; this daemon serves {info.model_id!r}",
                   param="model")


def truncate_flag(body: dict[str, Any]) -> bool:
    value = field(body, "truncate", bool, True)
    return bool(value)
