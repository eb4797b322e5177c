"""A declared dataclass read once: each field's JSON kind (from its annotation), its
constraints, its description, where it comes from in a request, and its default.

`arg(...)` is how a field says what the annotation cannot: its description, constraints on the
field as a whole, its name on the wire (`async` is a Python keyword), where an HTTP request
carries it (body, query string or path), a JSON shape that differs from what the program keeps
(`wire_type` + a `Convert`), that it is not on the wire at all (`internal`), or that it is
accepted for compatibility and read by nothing (`unused`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from localrank.declare.constraints import Constraint, Doc

REQUIRED: Any = dataclasses.MISSING
Where = Literal["body", "query", "path"]
_ARG = "localrank.declare"


@dataclass(frozen=True)
class Arg:
    doc: str = ""
    constraints: tuple[Constraint, ...] = ()
    name: str | None = None
    where: Where = "body"
    wire_type: Any = None
    internal: bool = False
    unused: bool = False


def arg(
    doc: str = "",
    *constraints: Constraint,
    default: Any = REQUIRED,
    factory: Any = REQUIRED,
    name: str | None = None,
    where: Where = "body",
    wire_type: Any = None,
    internal: bool = False,
    unused: bool = False,
) -> Any:
    """A dataclass field with its declaration (required unless a default or factory is given).
    `unused`: accepted (and checked) for compatibility, read by nothing."""
    meta = {_ARG: Arg(doc, constraints, name, where, wire_type, internal, unused)}
    if factory is not REQUIRED:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class Kind:
    """A JSON kind: string, integer, number, boolean, array, object, any, record (a declared
    dataclass), union (anyOf) or path (a string kept as a Path: settings only)."""

    base: str
    constraints: tuple[Constraint, ...] = ()
    doc: str = ""
    nullable: bool = False
    items: Kind | None = None  # array items, object values
    keys: Kind | None = None  # object keys
    options: tuple[Kind, ...] = ()  # union
    record: type | None = None
    as_tuple: bool = False

    def but(self, **changes: Any) -> Kind:
        return dataclasses.replace(self, **changes)


_SIMPLE = {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path"}


def kind_of(tp: Any) -> Kind:
    """The kind of a type annotation (resolved, with `Annotated` extras)."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        inner = kind_of(args[0])
        extras = tuple(a for a in args[1:] if isinstance(a, Constraint))
        docs = [a.text for a in extras if isinstance(a, Doc)]
        rules = tuple(a for a in extras if not isinstance(a, Doc))
        return inner.but(constraints=inner.constraints + rules, doc=docs[-1] if docs else inner.doc)
    if origin in (Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        nullable = len(rest) < len(args)
        kind = (
            kind_of(rest[0]) if len(rest) == 1 else Kind("union", options=tuple(map(kind_of, rest)))
        )
        return kind.but(nullable=nullable or kind.nullable)
    if tp is Any:
        return Kind("any")
    if tp in _SIMPLE:
        return Kind(_SIMPLE[tp])
    if origin in (list, Sequence) or tp is list:
        return Kind("array", items=kind_of(args[0]) if args else Kind("any"))
    if origin is tuple:
        return Kind("array", items=kind_of(args[0]), as_tuple=True)
    if origin in (dict, Mapping) or tp is dict:
        keys, values = (
            (kind_of(args[0]), kind_of(args[1])) if args else (Kind("string"), Kind("any"))
        )
        return Kind("object", keys=keys, items=values)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return Kind("record", record=tp)
    raise TypeError(f"no JSON kind for {tp!r}")


@dataclass(frozen=True)
class FieldDecl:
    """One field of a declared dataclass."""

    attr: str
    wire: str
    where: Where
    kind: Kind  # the kind on the wire, with the field's own constraints
    doc: str
    required: bool
    default: Any  # a value, or None (required, or a factory the dataclass calls)
    internal: bool
    unused: bool

    @property
    def constraints(self) -> tuple[Constraint, ...]:
        return self.kind.constraints


class Rule:
    """A rule across fields of one declared dataclass (listed in its `RULES` class variable):
    its JSON Schema fragment (joined with allOf) and its check of the parsed value."""

    def schema(self, ctx: Any) -> dict[str, Any]:
        return {}

    def check(self, value: Any) -> tuple[str, str] | None:
        """(param, message) when the value breaks the rule, else None."""
        return None


@dataclass(frozen=True)
class Record:
    cls: type
    fields: tuple[FieldDecl, ...]
    rules: tuple[Rule, ...]

    def field(self, wire: str) -> FieldDecl:
        for f in self.fields:
            if f.wire == wire:
                return f
        raise KeyError(wire)

    def on_wire(self, where: Where | None = None) -> tuple[FieldDecl, ...]:
        return tuple(
            f for f in self.fields if not f.internal and (where is None or f.where == where)
        )


@cache
def record_of(cls: type) -> Record:
    """The declaration of dataclass `cls`, read once."""
    hints = typing.get_type_hints(cls, include_extras=True)
    out = []
    for f in dataclasses.fields(cls):
        decl = f.metadata.get(_ARG, Arg())
        kind = kind_of(decl.wire_type if decl.wire_type is not None else hints[f.name])
        kind = kind.but(constraints=kind.constraints + decl.constraints)
        has_default = f.default is not dataclasses.MISSING
        has_factory = f.default_factory is not dataclasses.MISSING
        out.append(
            FieldDecl(
                attr=f.name,
                wire=decl.name or f.name,
                where=decl.where,
                kind=kind,
                doc=decl.doc or kind.doc,
                required=not (has_default or has_factory),
                default=f.default if has_default else None,
                internal=decl.internal,
                unused=decl.unused,
            )
        )
    rules = tuple(getattr(cls, "RULES", ()))
    return Record(cls, tuple(out), rules)
