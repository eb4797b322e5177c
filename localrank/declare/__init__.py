"""Declarations: a field says once what it takes.

A request body or query, the daemon's settings, a collection's chunking, a search: each is a
dataclass whose fields carry their type (the annotation, with `Annotated` constraints), their
description and their default. The parser, the JSON Schema of the OpenAPI document and the
settings checks are all read from that one declaration; nothing else lists a field's bounds
or choices.
"""

from localrank.declare.constraints import (
    WHITE_SPACE,
    Check,
    Choices,
    Constraint,
    Convert,
    Doc,
    Dynamic,
    Len,
    NonBlank,
    Pattern,
    Range,
    Schema,
    either,
)
from localrank.declare.kinds import REQUIRED, FieldDecl, Kind, Record, Rule, arg, kind_of, record_of
from localrank.declare.rules import Excludes, OneOf
from localrank.declare.wire import (
    describe,
    field_schema,
    parse,
    parse_request,
    parse_value,
    problem,
    record_schema,
    schema_of,
    value_of,
)

__all__ = [
    "REQUIRED",
    "Check",
    "Choices",
    "Constraint",
    "Convert",
    "Doc",
    "Dynamic",
    "Excludes",
    "FieldDecl",
    "Kind",
    "Len",
    "NonBlank",
    "OneOf",
    "Pattern",
    "Range",
    "Record",
    "Rule",
    "Schema",
    "WHITE_SPACE",
    "arg",
    "describe",
    "either",
    "field_schema",
    "kind_of",
    "parse",
    "parse_request",
    "parse_value",
    "problem",
    "record_of",
    "record_schema",
    "schema_of",
    "value_of",
]
