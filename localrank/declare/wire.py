"""A declared dataclass on the wire: JSON (or query-string text) parsed into it, and the JSON
Schema that documents exactly what the parser accepts.

Null counts as absent for every optional field (clients commonly send `"x": null` for "not
set"), so optional fields are documented as nullable; a required field must be present and not
null. Unknown fields are ignored. A value of the wrong type, out of bounds or not among the
choices is an InvalidInput naming the top-level field (`param`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, TypeVar, cast

from localrank.declare.constraints import Schema, either
from localrank.declare.kinds import FieldDecl, Kind, Where, kind_of, record_of
from localrank.errors import InvalidInput

T = TypeVar("T")
_INTEGER = re.compile(r"-?[0-9]+")
_NAMES = {
    "string": "a string",
    "path": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "object": "an object",
    "record": "an object",
    "any": "a value",
}


def describe(kind: Kind) -> str:
    """What a kind takes, in words: "a string or a list of strings"."""
    if kind.base == "union":
        return either([describe(o) for o in kind.options])
    if kind.base == "array":
        items = kind.items
        if items is not None and items.base in ("string", "integer", "number", "boolean"):
            plural = {"boolean": "booleans"}.get(items.base, describe(items).split(" ", 1)[1] + "s")
            return f"a list of {plural}"
        return "a list"
    return _NAMES[kind.base]


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object" if isinstance(value, dict) else "?"


def _fits(kind: Kind, value: Any) -> bool:
    """Whether `value` has the JSON type of `kind` (not yet its items or constraints)."""
    t = _json_type(value)
    if kind.base == "union":
        return any(_fits(o, value) for o in kind.options)
    if kind.base == "any":
        return True  # null too, inside a value (a field that is null is absent)
    if kind.base == "number":
        return t in ("integer", "number")
    if kind.base == "integer":  # JSON Schema's: 3.0 is an integer too
        return t == "integer" or (t == "number" and float(value).is_integer())
    if kind.base in ("record", "object"):
        return t == "object"
    if kind.base == "path":
        return t == "string"
    return t == kind.base


def _checks_entries(kind: Kind) -> bool:
    """Whether an object's keys or values are declared beyond "any" (metadata is not)."""
    keys, values = kind.keys, kind.items
    return bool(
        (keys is not None and keys.constraints) or (values is not None and values.base != "any")
    )


def value_of(kind: Kind, value: Any, name: str, param: str, ctx: Any = None) -> Any:
    """`value` checked against `kind` (type, items, constraints) and converted."""
    if not _fits(kind, value):
        raise InvalidInput(
            f"'{name}' must be {describe(kind)}, not {_json_type(value)}",
            param=param,
            mismatch=True,
        )
    out: Any = value
    if kind.base == "union":
        errors = []
        for option in (o for o in kind.options if _fits(o, value)):
            try:
                out = value_of(option, value, name, param, ctx)
                break
            except InvalidInput as exc:
                errors.append(exc)
        else:
            # A value of the right shape that breaks a constraint says best what is wrong;
            # otherwise say what the field takes, not how one reading of it failed.
            kept = [e for e in errors if not e.details.get("mismatch")]
            if kept or len({e.message for e in errors}) == 1:
                raise (kept or errors)[0]
            raise InvalidInput(f"'{name}' must be {describe(kind)}", param=param, mismatch=True)
    elif kind.base == "integer":
        out = int(value)
    elif kind.base == "number":
        out = float(value)
        if not math.isfinite(out):  # Python's JSON reads NaN, Infinity and 1e999
            raise InvalidInput(f"{name} must be a finite number, not {out}", param=param)
    elif kind.base == "array":
        assert kind.items is not None
        out = [value_of(kind.items, v, f"{name}[{i}]", param, ctx) for i, v in enumerate(value)]
        if kind.as_tuple:
            out = tuple(out)
    elif kind.base == "object" and _checks_entries(kind):
        assert kind.items is not None and kind.keys is not None
        out = {
            value_of(kind.keys, k, f"{name} key", param, ctx): value_of(
                kind.items, v, f"{name}.{k}", param, ctx
            )
            for k, v in value.items()
        }
    elif kind.base == "record":
        assert kind.record is not None
        out = _record(kind.record, {"body": value}, ctx, f"{name}.", param)
    for c in kind.constraints:
        message = c.check(name, out, ctx)
        if message is not None:
            raise InvalidInput(message, param=param)
    for c in kind.constraints:
        out = c.convert(out)
    return out


def problem(kind: Kind, name: str, value: Any, ctx: Any = None) -> str | None:
    """The first constraint `value` (of the right type already: a setting) breaks, items
    included; None when it keeps them all."""
    if kind.items is not None and kind.base == "array":
        for item in value:
            message = problem(kind.items, name, item, ctx)
            if message is not None:
                return message
    if kind.base == "number" and not math.isfinite(value):
        return f"{name} must be a finite number, not {value}"
    for c in kind.constraints:
        message = c.check(name, value, ctx)
        if message is not None:
            return message
    return None


def _from_text(kind: Kind, text: str, name: str, param: str) -> Any:
    """A query-string or path value as the JSON value it stands for."""
    bases = {o.base for o in kind.options} if kind.base == "union" else {kind.base}
    if bases & {"string", "any", "path"}:
        return text
    if "integer" in bases and _INTEGER.fullmatch(text):
        return int(text)
    if bases & {"integer", "number"}:
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if math.isfinite(number) and ("number" in bases or number.is_integer()):
            return number
    if "boolean" in bases and text in ("true", "false"):
        return text == "true"
    raise InvalidInput(f"'{name}' must be {describe(kind)}", param=param)


def _record(
    cls: type[T], sources: Mapping[str, Mapping[str, Any]], ctx: Any, prefix: str, param: str
) -> T:
    rec = record_of(cast(type, cls))
    values: dict[str, Any] = {}
    for f in rec.on_wire():
        source = sources.get(f.where, {})
        raw = source.get(f.wire)
        name, top = prefix + f.wire, param or f.wire
        if raw is None:
            if f.required:
                raise InvalidInput(f"'{name}' is required", param=top)
            continue
        if f.where != "body":
            raw = _from_text(f.kind, raw, name, top)
        values[f.attr] = value_of(f.kind, raw, name, top, ctx)
    out = cls(**values)
    for rule in rec.rules:
        broken = rule.check(out)
        if broken is not None:
            raise InvalidInput(broken[1], param=broken[0])
    return out


def parse(cls: type[T], data: Any, *, ctx: Any = None, what: str = "the body") -> T:
    """A JSON object (a request body, a stored value) as the declared dataclass `cls`."""
    if not isinstance(data, Mapping):
        raise InvalidInput(f"{what} must be a JSON object")
    return _record(cls, {"body": data}, ctx, "", "")


def parse_value(tp: Any, value: Any, name: str, *, ctx: Any = None) -> Any:
    """One JSON value as the annotated type `tp` (a list of documents, say)."""
    return value_of(kind_of(tp), value, name, name, ctx)


def parse_request(
    cls: type[T],
    *,
    body: Mapping[str, Any],
    query: Mapping[str, str],
    path: Mapping[str, str],
    ctx: Any = None,
) -> T:
    """An HTTP request's body, query string and path parameters as the declared `cls`."""
    return _record(cls, {"body": body, "query": query, "path": path}, ctx, "", "")


# --- JSON Schema --------------------------------------------------------------------------------


def _add(schema: Schema, fragment: Schema) -> None:
    """Merge a constraint's keywords; a keyword already set (two patterns) goes under allOf."""
    for key, value in fragment.items():
        if key in schema:
            schema.setdefault("allOf", []).append({key: value})
        else:
            schema[key] = value


def schema_of(kind: Kind, ctx: Any = None, *, nullable: bool | None = None) -> Schema:
    """The JSON Schema of a kind: exactly what `value_of` accepts (null only when nullable)."""
    base = kind.base
    s: Schema
    if base in ("string", "path"):
        s = {"type": "string"}
    elif base in ("integer", "number", "boolean"):
        s = {"type": base}
    elif base == "array":
        assert kind.items is not None
        s = {"type": "array", "items": schema_of(kind.items, ctx)}
    elif base == "object":
        s = {"type": "object"}
        if kind.items is not None and kind.items.base != "any":
            s["additionalProperties"] = schema_of(kind.items, ctx)
        if kind.keys is not None and kind.keys.constraints:
            s["propertyNames"] = schema_of(kind.keys, ctx)
    elif base == "record":
        assert kind.record is not None
        s = record_schema(kind.record, ctx)
    elif base == "union":
        s = {"anyOf": [schema_of(o, ctx) for o in kind.options]}
    else:
        s = {}
    for c in kind.constraints:
        _add(s, c.schema("string" if base == "path" else base, ctx))
    if kind.nullable if nullable is None else nullable:
        s = {"anyOf": [s, {"type": "null"}]}
    return s


def _json_default(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return value if isinstance(value, (str, int, float, bool, list, dict)) else None


def field_schema(f: FieldDecl, ctx: Any = None, *, in_json: bool = True) -> Schema:
    """A field's schema with its description and default. In JSON, an optional field may be
    null (absent); in a query string or a path nothing is null."""
    s = schema_of(f.kind, ctx, nullable=in_json and not f.required)
    if f.doc:
        s = {"description": f.doc, **s}
    if _json_default(f.default) is not None:
        s["default"] = _json_default(f.default)
    return s


def record_schema(cls: type, ctx: Any = None, where: Where = "body") -> Schema:
    """The object schema of the fields of `cls` carried in `where`, with its rules."""
    rec = record_of(cls)
    fields = rec.on_wire(where)
    s: Schema = {
        "type": "object",
        "properties": {f.wire: field_schema(f, ctx) for f in fields},
    }
    required = [f.wire for f in fields if f.required]
    if required:
        s["required"] = required
    rules = [r.schema(ctx) for r in rec.rules]
    if any(rules):
        s["allOf"] = [r for r in rules if r]
    return s
