"""What several dialects take alike, declared once: the fields they share (as annotated types,
with their descriptions and constraints), whether a request's inputs are queries or documents,
the model a request names, and the example values their documentation shows."""

from __future__ import annotations

from typing import Annotated

from localrank.declare import Choices, Doc, Excludes, Len, NonBlank, Range
from localrank.engine.names import answers_to, describe_names
from localrank.engine.tokenizer import TOKEN_IDS_ADVICE
from localrank.engine.types import ModelInfo
from localrank.errors import NotFound
from localrank.serve.requests import DIM, MAX_TOKEN_ID, MIN_DIM

QUERY_TYPES = ("query", "search_query", "queries", "question")
DOCUMENT_TYPES = (
    "document",
    "search_document",
    "passage",
    "documents",
    "passages",
    "classification",
    "clustering",
)

Model = Annotated[str, Doc("The served model's id or alias; an unknown name is a 404.")]
_KINDS = Choices(
    QUERY_TYPES + DOCUMENT_TYPES,
    fold_case=True,
    message="{name} must be query or document (or search_query / search_document), not {value!r}",
)
InputType = Annotated[
    str, Doc("query or document (also search_query / search_document), any case."), _KINDS
]
PromptName = Annotated[str, Doc("query or document (a query gets the instruction)."), _KINDS]
Instruction = Annotated[
    str, Doc("A task instruction for instruction-tuned models (implies a query).")
]
Dimensions = Annotated[
    int,
    Doc("Matryoshka size: keep the first n dimensions, re-normalised."),
    Range(MIN_DIM, DIM),
]
Truncate = Annotated[
    bool, Doc("Cut inputs over the model's token limit (default true); false makes them a 413.")
]
Query = Annotated[
    str, Doc("The query to rank documents against."), NonBlank("{name} must not be empty")
]
PositiveInt = Annotated[int, Range(1, message="'{name}' must be a positive integer")]
Texts = Annotated[list[str], Len(1)]
TokenId = Annotated[
    int,
    Range(
        0,
        MAX_TOKEN_ID,
        message="{name} is {value}, not a token id of the served model. " + TOKEN_IDS_ADVICE,
    ),
]
TokenIds = Annotated[list[TokenId], Len(1)]
# TEI's `truncation_direction`: only Right (the end is cut) is served.
Direction = Annotated[
    str,
    Doc("Right (the only one supported)."),
    Choices(("right",), fold_case=True, message="only truncation_direction Right is supported"),
]


def instruction_for_queries(kind: str) -> Excludes:
    """The rule that an instruction goes with queries: 422 with a document `kind`."""
    return Excludes(
        "instruction",
        kind,
        Choices(DOCUMENT_TYPES, fold_case=True),
        "an instruction applies to queries, not documents",
    )


def query_mode(
    kind: str | None, instruction: str | None, *, default_query: bool = False
) -> tuple[bool, str | None]:
    """(is query, instruction) from `input_type` (OpenAI-compatible servers, Cohere), TEI's
    `prompt_name` or Ollama's, or a free `instruction` (which implies a query)."""
    if kind is None:
        return (True if instruction is not None else default_query), instruction
    if kind.lower() in QUERY_TYPES:
        return True, instruction
    return False, None


def serves(info: ModelInfo, name: str) -> bool:
    """True when `name` names the served model: one of its names (engine/names.py), a generic
    name such as "default", or the `model` field its own responses carry."""
    return answers_to(name, info.names) or name == info.display_name


def unknown_model(name: str, info: ModelInfo) -> str:
    """Why `name` is refused, listing the names that would be accepted."""
    return f"model {name!r} is not served here; it answers to {describe_names(info.names)}"


def check_requested_model(name: str | None, info: ModelInfo) -> None:
    """A request may name the served model (by any of its names), or none."""
    if name is not None and not serves(info, name):
        raise NotFound(unknown_model(name, info), param="model")


MINILM = "sentence-transformers/all-MiniLM-L6-v2"
VEC = [0.0123, -0.0456, 0.0789]
EMBEDDING = {
    "object": "list",
    "data": [{"object": "embedding", "index": 0, "embedding": VEC}],
    "model": MINILM,
    "usage": {"prompt_tokens": 5, "total_tokens": 5, "truncated_inputs": 0},
}
