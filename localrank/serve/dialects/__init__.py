"""The registry of API dialects: one module each, one line here. `make_app` serves them all."""

from __future__ import annotations

from localrank.serve.api import Dialect
from localrank.serve.dialects import cohere, native, ollama, openai, operations, search_api, tei

DIALECTS: tuple[Dialect, ...] = (
    operations.DIALECT,
    native.DIALECT,
    openai.DIALECT,
    search_api.DIALECT,
    cohere.DIALECT,
    tei.DIALECT,
    ollama.DIALECT,
)
# Errors on paths no dialect owns take localrank's own shape.
DEFAULT_DIALECT = operations.DIALECT

__all__ = ["DEFAULT_DIALECT", "DIALECTS"]
