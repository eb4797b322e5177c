"""The OpenAPI document rendered as one offline HTML page (no scripts, no CDN: a daemon on a
laptop must document itself without the network)."""

from __future__ import annotations

import json
from html import escape
from typing import Any

_METHODS = ("get", "post", "put", "delete", "patch")
# The page loads nothing and runs nothing; its own inline style is all it needs.
CSP = "default-src 'none'; style-src 'unsafe-inline'"
_STYLE = """
body{font:15px/1.45 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;
color:#1b1b1b}
h2{border-bottom:1px solid #ddd;margin-top:2.2rem}
.op{margin:1.2rem 0;padding:.6rem .9rem;border-left:4px solid #8aa4c8;background:#f7f9fc}
.m{font-weight:700;font-family:monospace;margin-right:.5rem}
code,pre{font-family:ui-monospace,monospace;font-size:13px}
pre{background:#eef1f5;padding:.5rem;overflow-x:auto;max-height:18rem}
table{border-collapse:collapse;margin:.4rem 0}
td,th{border:1px solid #d5dbe3;padding:.2rem .5rem;text-align:left;vertical-align:top}
nav a{margin-right:.8rem}
"""


def type_label(schema: dict[str, Any]) -> str:
    """A short human name for a JSON schema: `string | array<string>`."""
    if "oneOf" in schema:
        return " | ".join(type_label(s) for s in schema["oneOf"])
    if schema.get("type") == "array":
        return f"array<{type_label(schema.get('items', {}))}>"
    return str(schema.get("type", "any"))


def _fields_table(rows: list[tuple[str, str, bool, str]]) -> str:
    if not rows:
        return ""
    body = "".join(
        f"<tr><td><code>{escape(n)}</code></td><td>{escape(t)}</td>"
        f"<td>{'yes' if r else ''}</td><td>{escape(d)}</td></tr>"
        for n, t, r, d in rows
    )
    return (
        "<table><tr><th>field</th><th>type</th><th>required</th><th>description</th></tr>"
        f"{body}</table>"
    )


def _example(title: str, value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, indent=2)
    return f"<p>{title}</p><pre>{escape(text)}</pre>"


def _render_op(method: str, path: str, op: dict[str, Any]) -> str:
    parts = [
        f'<div class="op" id="{escape(op["operationId"])}">',
        f'<div><span class="m">{method.upper()}</span><code>{escape(path)}</code></div>',
        f"<p>{escape(op.get('summary', ''))}</p>",
    ]
    if op.get("description"):
        parts.append(f"<p>{escape(op['description'])}</p>")
    params = [
        (
            p["name"],
            f"{p['in']}: {type_label(p['schema'])}",
            p["required"],
            p.get("description", ""),
        )
        for p in op.get("parameters", [])
    ]
    parts.append(_fields_table(params))
    media = op.get("requestBody", {}).get("content", {}).get("application/json", {})
    schema = media.get("schema", {})
    required = set(schema.get("required", []))
    parts.append(
        _fields_table(
            [
                (name, type_label(s), name in required, s.get("description", ""))
                for name, s in schema.get("properties", {}).items()
            ]
        )
    )
    if "example" in media:
        parts.append(_example("Example request", media["example"]))
    for status, response in op.get("responses", {}).items():
        for content in response.get("content", {}).values():
            if "example" in content and status.startswith("2"):
                parts.append(_example(f"Example response ({status})", content["example"]))
    parts.append("</div>")
    return "".join(parts)


def render_html(spec: dict[str, Any]) -> str:
    """The spec as one readable page, grouped by tag (dialect)."""
    groups: dict[str, list[str]] = {}
    for path, item in spec["paths"].items():
        for method in _METHODS:
            if method in item:
                op = item[method]
                groups.setdefault(op["tags"][0], []).append(_render_op(method, path, op))
    nav = "".join(f'<a href="#tag-{escape(t)}">{escape(t)}</a>' for t in groups)
    sections = "".join(
        f'<h2 id="tag-{escape(t)}">{escape(t)}</h2>{"".join(ops)}' for t, ops in groups.items()
    )
    info = spec["info"]
    return (
        f"<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{escape(info['title'])} API</title><style>{_STYLE}</style></head><body>"
        f"<h1>{escape(info['title'])} {escape(info['version'])}</h1>"
        f"<p>{escape(info['description'])}</p>"
        f'<p>Machine-readable: <a href="/openapi.json">/openapi.json</a></p>'
        f"<nav>{nav}</nav>{sections}</body></html>"
    )
