"""Rules across the fields of one declared dataclass, each with its JSON Schema fragment."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from localrank.declare.constraints import Choices, Schema, either
from localrank.declare.kinds import Rule


@dataclass(frozen=True)
class OneOf(Rule):
    """At least one of `names` is given (not null; with `nonempty`, a string, not "")."""

    names: tuple[str, ...]
    nonempty: bool = False
    message: str | None = None

    def schema(self, ctx: Any) -> Schema:
        given: Schema = (
            {"type": "string", "minLength": 1} if self.nonempty else {"not": {"type": "null"}}
        )
        return {"anyOf": [{"required": [n], "properties": {n: given}} for n in self.names]}

    def check(self, value: Any) -> tuple[str, str] | None:
        absent = (None, "") if self.nonempty else (None,)
        if any(getattr(value, n) not in absent for n in self.names):
            return None
        words = either([f"'{n}'" for n in self.names])
        return self.names[0], self.message or f"{words} is required"


@dataclass(frozen=True)
class Excludes(Rule):
    """`name` may not be given while `when` holds one of `values` (`choices`)."""

    name: str
    when: str
    choices: Choices
    message: str

    def schema(self, ctx: Any) -> Schema:
        condition = {
            "required": [self.name, self.when],
            "properties": {
                self.name: {"not": {"type": "null"}},
                self.when: {"type": "string", **self.choices.schema("string", ctx)},
            },
        }
        return {"not": condition}

    def check(self, value: Any) -> tuple[str, str] | None:
        given, when = getattr(value, self.name), getattr(value, self.when)
        if given is None or when is None or self.choices.check(self.when, when, None) is not None:
            return None
        return self.name, self.message
