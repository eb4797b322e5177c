"""What a field may hold beyond its type: bounds, lengths, choices, patterns, and its description.

Each constraint gives its JSON Schema fragment and checks a value against the same numbers, so
the OpenAPI document, the request parsers and the settings checks cannot disagree. A bound or a
set of choices may be `Dynamic`: known only at run time (the served model's width), read from a
context object, and left out (neither documented nor checked) without one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

Schema = dict[str, Any]
# A message: a template ({name}, {value}, {value!r}) or a function of the value.
Message = str | Callable[[Any], str] | None


@dataclass(frozen=True)
class Dynamic:
    """A value known at run time only: attribute `key` of the context (None without one)."""

    key: str

    def resolve(self, ctx: Any) -> Any:
        return None if ctx is None else getattr(ctx, self.key, None)


def resolve(value: Any, ctx: Any) -> Any:
    return value.resolve(ctx) if isinstance(value, Dynamic) else value


def say(message: Message, name: str, value: Any) -> str | None:
    if message is None:
        return None
    if callable(message):
        return message(value)
    return message.format(name=name, value=value)


def either(values: Sequence[Any]) -> str:
    """`a, b or c`."""
    words = [str(v) for v in values]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


class Constraint:
    """A rule on a value: the JSON Schema fragment that documents it, and its check."""

    def schema(self, base: str, ctx: Any) -> Schema:
        return {}

    def check(self, name: str, value: Any, ctx: Any) -> str | None:
        """The message when `value` breaks the rule, else None."""
        return None

    def convert(self, value: Any) -> Any:
        return value


@dataclass(frozen=True)
class Doc(Constraint):
    """The description of a field or of a type alias (`Annotated[int, Doc(...)]`)."""

    text: str


@dataclass(frozen=True)
class Range(Constraint):
    """lo <= value <= hi (lo < value with `above`); either bound may be None or Dynamic."""

    lo: float | Dynamic | None = None
    hi: float | Dynamic | None = None
    above: bool = False
    message: Message = None

    def bounds(self, ctx: Any) -> tuple[Any, Any]:
        return resolve(self.lo, ctx), resolve(self.hi, ctx)

    def schema(self, base: str, ctx: Any) -> Schema:
        lo, hi = self.bounds(ctx)
        out: Schema = {}
        if lo is not None:
            out["exclusiveMinimum" if self.above else "minimum"] = lo
        if hi is not None:
            out["maximum"] = hi
        return out

    def check(self, name: str, value: Any, ctx: Any) -> str | None:
        lo, hi = self.bounds(ctx)
        low = lo is not None and (value <= lo if self.above else value < lo)
        if not (low or (hi is not None and value > hi)):
            return None
        if self.message is not None:
            return say(self.message, name, value)
        if hi is None:
            return f"{name} must be {'more than' if self.above else 'at least'} {lo}, not {value}"
        if lo is None:
            return f"{name} must be at most {hi}, not {value}"
        return f"{name} must be in {lo}..{hi}, not {value}"


_LENGTH_KEYS = {
    "string": ("minLength", "maxLength", "characters"),
    "array": ("minItems", "maxItems", "items"),
    "object": ("minProperties", "maxProperties", "keys"),
}


@dataclass(frozen=True)
class Len(Constraint):
    """The length of a string (characters), a list (items) or an object (keys)."""

    min: int | None = None
    max: int | None = None
    message: Message = None

    def schema(self, base: str, ctx: Any) -> Schema:
        low, high, _ = _LENGTH_KEYS.get(base, _LENGTH_KEYS["array"])
        out: Schema = {}
        if self.min is not None:
            out[low] = self.min
        if self.max is not None:
            out[high] = self.max
        return out

    def check(self, name: str, value: Any, ctx: Any) -> str | None:
        n = len(value)
        if (self.min is None or n >= self.min) and (self.max is None or n <= self.max):
            return None
        if self.message is not None:
            return say(self.message, name, value)
        unit = _LENGTH_KEYS["string" if isinstance(value, str) else "array"][2]
        if self.min == 1 and self.max is None:
            return f"{name} must not be empty"
        if self.max is None:
            return f"{name} must have at least {self.min} {unit}"
        return f"{name} must have {self.min or 0}..{self.max} {unit}, not {n}"


def _any_case(word: str) -> str:
    """A regex matching `word` in any letter case, without inline flags (JSON Schema has none)."""
    return "".join(
        f"[{c.upper()}{c.lower()}]" if c.upper() != c.lower() else re.escape(c) for c in word
    )


@dataclass(frozen=True)
class Choices(Constraint):
    """One of `values` (compared without case with `fold_case`)."""

    values: tuple[str, ...] | Dynamic
    fold_case: bool = False
    message: Message = None

    def options(self, ctx: Any) -> tuple[str, ...] | None:
        values = resolve(self.values, ctx)
        return None if values is None else tuple(values)

    def schema(self, base: str, ctx: Any) -> Schema:
        values = self.options(ctx)
        if values is None:
            return {}
        if self.fold_case:
            return {"pattern": "^(?:" + "|".join(_any_case(v) for v in values) + ")$"}
        return {"enum": list(values)}

    def check(self, name: str, value: Any, ctx: Any) -> str | None:
        values = self.options(ctx)
        if values is None:
            return None
        ok = value.lower() in {v.lower() for v in values} if self.fold_case else value in values
        if ok:
            return None
        return say(self.message, name, value) or (
            f"{name} must be one of {', '.join(values)}, not {value!r}"
        )


@dataclass(frozen=True)
class Pattern(Constraint):
    """A string in which `regex` finds a match (JSON Schema's `pattern`: unanchored)."""

    regex: str
    message: Message = None

    def schema(self, base: str, ctx: Any) -> Schema:
        return {"pattern": self.regex}

    def check(self, name: str, value: Any, ctx: Any) -> str | None:
        # A closing `$` is the end of the string in JSON Schema; in Python `\Z` is.
        regex = self.regex[:-1] + r"\Z" if re.search(r"(?<!\\)\$$", self.regex) else self.regex
        if re.search(regex, value) is not None:
            return None
        return say(self.message, name, value) or f"{name} must match {self.regex}"


# What str.strip() removes, spelled out: `\s` means other characters to JSON Schema (ECMAScript),
# to Python and to generators reading patterns as ASCII; an explicit class means the same to all.
WHITE_SPACE = r"\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"


def NonBlank(message: Message = None) -> Pattern:  # noqa: N802 (reads as a constraint)
    """A string with something besides white space (what `text.strip()` keeps)."""
    return Pattern(f"[^{WHITE_SPACE}]", message or "{name} must not be empty")


@dataclass(frozen=True)
class Check(Constraint):
    """A rule no JSON Schema keyword expresses (settings only: the API documents what it checks)."""

    test: Callable[[Any], bool]
    message: Message

    def check(self, name: str, value: Any, ctx: Any) -> str | None:
        return None if self.test(value) else say(self.message, name, value)


@dataclass(frozen=True)
class Convert(Constraint):
    """Turns a valid value into what the program keeps (after every check)."""

    fn: Callable[[Any], Any]

    def convert(self, value: Any) -> Any:
        return self.fn(value)
