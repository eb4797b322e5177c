"""Request parsing shared by the dialects: the JSON body, typed fields, and the fields several
dialects share (query or document, instructions, the model a request names, truncation)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from localrank.engine.names import answers_to, describe_names
from localrank.engine.types import ModelInfo
from localrank.errors import BadRequest, InvalidInput, NotFound

QUERY_TYPES = {"query", "search_query", "queries", "question"}
DOCUMENT_TYPES = {
    "document",
    "search_document",
    "passage",
    "documents",
    "passages",
    "classification",
    "clustering",
}


async def read_body(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object, or BadRequest naming what is wrong."""
    raw = await request.read()
    if not raw:
        raise BadRequest("the request body is empty; send a JSON object")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def field(
    body: dict[str, Any],
    name: str,
    kind: type | tuple[type, ...],
    default: Any = None,
    *,
    required: bool = False,
) -> Any:
    """A typed field of a JSON body. bool is not accepted where int is asked."""
    if name not in body or body[name] is None:
        if required:
            raise InvalidInput(f"{name!r} is required", param=name)
        return default
    value = body[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise InvalidInput(f"{name!r} must be {_kind_name(kinds)}", param=name)
    if not isinstance(value, kinds):
        raise InvalidInput(
            f"{name!r} must be {_kind_name(kinds)}, not {type(value).__name__}", param=name
        )
    return value


def _kind_name(kinds: tuple[type, ...]) -> str:
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean",
        list: "a list",
        dict: "an object",
    }
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def positive_int(body: dict[str, Any], name: str, default: int | None = None) -> int | None:
    value = field(body, name, int, default)
    if value is not None and value <= 0:
        raise InvalidInput(f"{name!r} must be a positive integer", param=name)
    return value


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
            raise InvalidInput(
                "an instruction applies to queries, not documents", param="instruction"
            )
        return False, None
    raise InvalidInput(
        f"input_type must be query or document (or search_query / search_document), not {kind!r}",
        param="input_type",
    )


def serves(info: ModelInfo, name: str) -> bool:
    """True when `name` names the served model: one of its names (engine/names.py), a generic
    name such as "default", or the `model` field its own responses carry."""
    return answers_to(name, info.names) or name == info.display_name


def unknown_model(name: str, info: ModelInfo) -> str:
    """Why `name` is refused, listing the names that would be accepted."""
    return f"model {name!r} is not served here; it answers to {describe_names(info.names)}"


def check_requested_model(body: dict[str, Any], info: ModelInfo) -> None:
    """A request may name the served model (by any of its names), or none."""
    name = field(body, "model", str)
    if name is not None and not serves(info, name):
        raise NotFound(unknown_model(name, info), param="model")


def truncate_flag(body: dict[str, Any]) -> bool:
    value = field(body, "truncate", bool, True)
    return bool(value)
