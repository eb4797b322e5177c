"""Body fields and example values that several dialects document the same way."""

from __future__ import annotations

from localrank.serve.api import BOOL, INT, STR, Param

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
VEC = [0.0123, -0.0456, 0.0789]
EMBEDDING = {
    "object": "list",
    "data": [{"object": "embedding", "index": 0, "embedding": VEC}],
    "model": MINILM,
    "usage": {"prompt_tokens": 5, "total_tokens": 5, "truncated_inputs": 0},
}

MODEL = Param("model", STR, "The served model's id or alias; an unknown name is a 404.")
INPUT_TYPE = Param("input_type", STR, "query or document (also search_query / search_document).")
INSTRUCTION = Param(
    "instruction", STR, "A task instruction for instruction-tuned models (implies a query)."
)
DIMENSIONS = Param(
    "dimensions", INT, "Matryoshka size: keep the first n dimensions, re-normalised."
)
TRUNCATE = Param(
    "truncate",
    BOOL,
    "Cut inputs over the model's token limit (default true); false makes them a 413.",
)
QUERY = Param("query", STR, "The query to rank documents against.", required=True)
