"""The declaration layer, and the registry built on it: every route's requests are read into the
type its handler declares, the OpenAPI document shows exactly that type, no handler reads a
request any other way, and every declared field is read by something.

A field is declared once (type, bounds, choices, description, default), so the document and the
checks cannot disagree by construction; these tests prove the construction holds everywhere.
"""

from __future__ import annotations

import ast
import inspect
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar

import pytest
from aiohttp import web
from fake_embedder import hash_loader

from localrank.config import load_settings
from localrank.declare import (
    WHITE_SPACE,
    Choices,
    Dynamic,
    Len,
    NonBlank,
    OneOf,
    Range,
    Rule,
    arg,
    parse,
    parse_request,
    record_of,
    record_schema,
)
from localrank.errors import InvalidInput
from localrank.serve.api import Operation, Route, route
from localrank.serve.app import make_app
from localrank.serve.openapi import build_spec
from localrank.serve.state import DIALECTS_KEY

DIALECTS = Path(__file__).resolve().parent.parent / "localrank" / "serve" / "dialects"


@dataclass(frozen=True)
class Limits:
    top: int


@dataclass(frozen=True, kw_only=True)
class Toy:
    query: Annotated[str, NonBlank()] = arg("The query.")
    n: Annotated[int, Range(1, Dynamic("top"))] = arg("How many.", default=10)
    side: Annotated[str, Choices(("Left", "Right"), fold_case=True)] | None = None
    tags: Annotated[list[str], Len(1)] | None = None
    other: str | None = None
    RULES: ClassVar[tuple[Rule, ...]] = (OneOf(("tags", "other")),)


def refused(cls: type, body: dict[str, Any], ctx: Any = None) -> InvalidInput:
    with pytest.raises(InvalidInput) as err:
        parse(cls, body, ctx=ctx)
    return err.value


def test_null_is_absent_and_documented_as_nullable() -> None:
    toy = parse(Toy, {"query": "q", "n": None, "side": None, "tags": ["a"]})
    assert (toy.n, toy.side) == (10, None)
    props = record_schema(Toy)["properties"]
    assert {"type": "null"} in props["n"]["anyOf"] and props["n"]["default"] == 10
    # A required field is neither optional nor nullable.
    assert "anyOf" not in props["query"] and record_schema(Toy)["required"] == ["query"]
    assert refused(Toy, {"query": None, "tags": ["a"]}).param == "query"


def test_dynamic_bounds_are_checked_and_documented_only_when_known() -> None:
    body = {"query": "q", "n": 500, "tags": ["a"]}
    assert parse(Toy, body).n == 500  # no context: no upper bound known
    assert "maximum" not in str(record_schema(Toy)["properties"]["n"])
    assert refused(Toy, body, Limits(top=100)).param == "n"
    n = record_schema(Toy, Limits(top=100))["properties"]["n"]["anyOf"][0]
    assert (n["minimum"], n["maximum"]) == (1, 100)


def test_a_case_free_choice_is_a_pattern_accepting_exactly_what_the_check_accepts() -> None:
    side = record_schema(Toy)["properties"]["side"]["anyOf"][0]
    pattern = side["pattern"].removesuffix("$") + r"\Z"  # JSON Schema's `$`: the very end
    for word in ("Right", "right", "RIGHT", "lEfT", "Up", "Righty", "", " right", "right\n"):
        documented = re.search(pattern, word) is not None
        try:
            parse(Toy, {"query": "q", "side": word, "tags": ["a"]})
            accepted = True
        except InvalidInput:
            accepted = False
        assert documented == accepted, word


def test_blank_means_what_strip_removes_in_every_regex_reading() -> None:
    space = re.compile(f"[{WHITE_SPACE}]")
    assert all((space.fullmatch(c) is not None) == c.isspace() for c in map(chr, range(0x110000)))
    for text in ("\u00a0", "\x1c \u3000", "\ufeff", "a"):
        blank = not text.strip()
        assert (re.search(NonBlank().regex, text) is None) == blank
        assert (re.search(NonBlank().regex, text, re.ASCII) is None) == blank


def test_rules_across_fields_have_a_schema_and_a_check() -> None:
    assert refused(Toy, {"query": "q"}).message == "'tags' or 'other' is required"
    assert parse(Toy, {"query": "q", "other": "x"}).other == "x"
    assert record_schema(Toy)["allOf"][0]["anyOf"][1]["required"] == ["other"]


def test_type_errors_name_the_top_level_field() -> None:
    err = refused(Toy, {"query": "q", "tags": ["a", 5]})
    assert err.param == "tags" and "tags[1]" in err.message
    assert refused(Toy, {"query": "q", "n": True, "tags": ["a"]}).param == "n"  # not an int
    assert refused(Toy, {"query": " ", "tags": ["a"]}).message == "query must not be empty"


@dataclass(frozen=True, kw_only=True)
class Paged:
    name: str = arg(where="path")
    limit: Annotated[int, Range(1, 5)] = arg(where="query", default=2)
    flag: bool = arg(where="query", default=False)


def test_query_and_path_values_are_read_from_text() -> None:
    got = parse_request(Paged, body={}, query={"limit": "3", "flag": "true"}, path={"name": "x"})
    assert (got.name, got.limit, got.flag) == ("x", 3, True)
    # JSON Schema's integers include 3.0 (a query string may carry it so, as JSON may).
    assert parse_request(Paged, body={}, query={"limit": "3.0"}, path={"name": "x"}).limit == 3
    for query in ({"limit": "3.5"}, {"limit": "9"}, {"limit": ""}, {"flag": "yes"}):
        with pytest.raises(InvalidInput):
            parse_request(Paged, body={}, query=query, path={"name": "x"})


async def _takes_nothing(request: web.Request) -> web.Response:
    return web.Response()


async def _takes_paged(request: web.Request, req: Paged) -> web.Response:
    return web.Response()


def test_a_route_declares_exactly_its_path_parameters() -> None:
    assert route("GET", "/x/{name}", _takes_paged, Operation("x")).takes is Paged
    with pytest.raises(TypeError):
        route("GET", "/x/{name}", _takes_nothing, Operation("x"))
    with pytest.raises(TypeError):
        route("GET", "/x/{name}/{other}", _takes_paged, Operation("x"))


# --- the registry ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, minilm: Path) -> web.Application:
    home = tmp_path_factory.mktemp("declare")
    return make_app(load_settings({"home": str(home)}, environ={}), loader=hash_loader(minilm))


def _routes(app: web.Application) -> list[Route]:
    return [r for _, r in app[DIALECTS_KEY].routes()]


def test_every_documented_param_is_the_one_its_parser_reads(app: web.Application) -> None:
    spec = build_spec(app)
    for r in _routes(app):
        path = re.sub(r"\{(\w+):[^}]*\}", r"{\1}", r.path)
        op = spec["paths"][path][r.method.lower()]
        documented = {(p["in"], p["name"]) for p in op.get("parameters", [])}
        body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
        documented |= {("body", name) for name in body.get("schema", {}).get("properties", {})}
        fields = record_of(r.takes).on_wire() if r.takes is not None else ()
        assert documented == {(f.where, f.wire) for f in fields}, (r.method, r.path)
        if fields:  # the body's rules are documented with it
            rules = record_of(r.takes).rules  # type: ignore[arg-type]
            assert len(body.get("schema", {}).get("allOf", [])) == len([x for x in rules if x])


def test_every_example_is_a_valid_request(app: web.Application) -> None:
    for r in _routes(app):
        if r.doc.example is not None:
            assert r.takes is not None, r.path
            path = {name: "x" for name in r.path_params}
            parse_request(r.takes, body=r.doc.example, query={}, path=path)


def _dialect_modules() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text()) for p in DIALECTS.glob("*.py")}


def test_no_handler_reads_a_request_but_through_its_declaration() -> None:
    reads = {"query", "match_info", "json", "read", "post", "text", "content", "can_read_body"}
    for name, tree in _dialect_modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                bad = node.value.id == "request" and node.attr in reads
                assert not bad, f"{name}.py reads request.{node.attr}"
            if isinstance(node, ast.Name):
                assert node.id != "read_body", f"{name}.py reads the body itself"


def _attributes_read(module: Any) -> set[str]:
    source = module[1] if isinstance(module, tuple) else inspect.getsource(module)
    return {n.attr for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Attribute)}


# (path, source) of every module of the package: the ones that name a request type may read it.
_PACKAGE_MODULES = {(str(p), p.read_text()) for p in DIALECTS.parent.parent.rglob("*.py")}


def test_every_declared_field_is_read(app: web.Application) -> None:
    """A field a route declares is read by its handler's module, the request type's own (a
    property), or a module that names the type (the search pipeline), unless declared `unused`
    (accepted for compatibility)."""
    for r in _routes(app):
        if r.takes is None:
            continue
        types = [c for c in r.takes.__mro__ if c is not object]
        modules = {sys.modules[r.handler.__module__]} | {sys.modules[c.__module__] for c in types}
        modules |= {m for m in _PACKAGE_MODULES if any(c.__name__ in m[1] for c in types)}
        read = set().union(*(_attributes_read(m) for m in modules))
        for f in record_of(r.takes).on_wire():
            if not f.unused:
                assert f.attr in read, (r.method, r.path, f.attr)
