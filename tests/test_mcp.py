"""`localrank mcp` end to end, driven by the official SDK's own client: over stdio (as editors
launch it; both the 2026-07-28 protocol and a 2025-era client's `initialize` handshake) and over
Streamable HTTP (behind the daemon's Host / Origin / token rules), against a live daemon with
a collection indexed in the test; and the in-process daemon it starts when none answers."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from daemons import BIN, LiveDaemon, free_port, request, write_notes
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from localrank.errors import NotFound
from localrank.mcp.daemon import DaemonAccess
from localrank.mcp.server import build_server

LOCALRANK = str(BIN / "localrank")
READ_TOOLS = {"search", "get", "get_many", "collections", "status"}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, minilm: Path) -> Iterator[LiveDaemon]:
    base = tmp_path_factory.mktemp("mcp")
    daemon = LiveDaemon(base / "home", free_port(), minilm).start()
    folder = base / "notes"
    write_notes(folder)
    assert request(f"{daemon.url}/v1/collections", {"name": "notes"})[0] == 201
    status, out = request(f"{daemon.url}/v1/collections/notes/index", {"path": str(folder)})
    assert status == 200, out
    assert daemon.wait_job(out["job_id"])["state"] == "done"
    daemon.extra_env["NOTES"] = str(folder.resolve())
    try:
        yield daemon
    finally:
        daemon.stop()


def stdio(daemon: LiveDaemon, *args: str, env: dict[str, str] | None = None) -> Any:
    source = env or daemon.env
    # An editor passes its own environment; PYTHONPATH: the checkout under test, when set.
    keep = {k: v for k, v in source.items() if k.startswith("LOCALRANK_") or k == "PYTHONPATH"}
    return StdioServerParameters(command=LOCALRANK, args=["mcp", *args], env=keep)


def structured(result: Any) -> dict[str, Any]:
    """The tool's structuredContent, which its text content carries too (for clients that
    read only text)."""
    assert not result.is_error, result.content
    assert json.loads(result.content[0].text) == result.structured_content
    return dict(result.structured_content)


async def exercise(client: Client, notes: Path) -> None:
    """What every transport must do: tools listed with schemas, cited search, get by the
    citation, tool errors for bad arguments and for the daemon's refusals."""
    tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == READ_TOOLS  # no index tool without --allow-index
    for t in tools.values():
        assert t.description and t.input_schema["type"] == "object"
        # Read-only, idempotent, closed-world; a typed answer (outputSchema) for each.
        a = t.annotations
        assert a is not None and t.title, t.name
        assert (a.read_only_hint, a.destructive_hint, a.idempotent_hint, a.open_world_hint) == (
            True,
            False,
            True,
            False,
        ), t.name
        assert t.output_schema is not None and t.output_schema["type"] == "object", t.name
        assert t.output_schema.get("properties"), t.name  # fields, not just "an object"
    assert set(tools["search"].output_schema["properties"]) == {"query", "collections", "results"}
    assert "get_many" in (client.instructions or "")  # server instructions for the agent
    search_schema = tools["search"].input_schema["properties"]
    assert {"query", "collections", "top_k", "mode", "rerank", "filter"} <= set(search_schema)
    assert search_schema["top_k"]["maximum"] == 100

    out = structured(await client.call_tool("search", {"query": "how to bake bread", "top_k": 3}))
    top = out["results"][0]
    assert "notes" in out["collections"] and len(out["results"]) == 3
    assert top["citation"]["source"] == (notes / "bread.md").as_posix()
    assert (top["citation"]["line_start"], top["citation"]["line_end"]) == (1, 5)
    assert "Sourdough" in top["text"] and 0 < top["score"] <= 1
    assert top["also_in"] == []  # no other note repeats it

    filtered = structured(
        await client.call_tool(
            "search", {"query": "rise", "mode": "keyword", "filter": {"path": "tides.md"}}
        )
    )
    assert [r["citation"]["source"] for r in filtered["results"]] == [
        (notes / "tides.md").as_posix()
    ]

    lines = (notes / "bread.md").read_text().splitlines(keepends=True)
    got = structured(
        await client.call_tool(
            "get", {"document": top["citation"]["source"], "line_start": 3, "line_end": 4}
        )
    )
    assert got["text"] == "".join(lines[2:4]) and got["total_lines"] == len(lines)
    assert got["metadata"]["format"] == "markdown" and got["collection"] == "notes"
    whole = structured(await client.call_tool("get", {"document": top["document_id"]}))
    assert whole["text"] == "".join(lines)

    # Several cited passages in one call: by id, by cited path and by glob, under a size cap.
    many = structured(
        await client.call_tool(
            "get_many",
            {"documents": [top["document_id"], str(notes / "tides.md"), "sub/*.md", "nope*.md"]},
        )
    )
    sources = [d["source"] for d in many["documents"]]
    assert sources == [
        (notes / name).as_posix() for name in ("bread.md", "tides.md", "sub/python.md")
    ]
    assert many["documents"][0]["text"] == "".join(lines) and many["not_found"] == ["nope*.md"]
    assert many["chars"] == sum(len(d["text"]) for d in many["documents"])
    capped = structured(
        await client.call_tool("get_many", {"documents": ["*.md"], "max_chars": 1000})
    )
    assert capped["chars"] <= 1000 and len(capped["documents"]) + len(capped["omitted"]) == 4
    assert all(o["source"].startswith(notes.as_posix()) for o in capped["omitted"])
    small = structured(
        await client.call_tool("get_many", {"documents": ["**/*.md"], "max_chars": 1000})
    )
    assert [d["truncated"] for d in small["documents"]].count(True) <= 1
    too_many = await client.call_tool("get_many", {"documents": ["a"] * 51})
    assert too_many.is_error

    listed = structured(await client.call_tool("collections", {}))["collections"]
    assert ("notes", 4) in [(c["name"], c["documents"]) for c in listed]
    status = structured(await client.call_tool("status", {}))
    assert status["status"] == "ok" and status["model"]["dim"] == 384
    assert status["jobs_in_progress"] == [] and isinstance(status["watched_folders"], list)

    for bad in (
        {"query": "x", "top_k": 0},
        {"query": ""},
        {"top_k": 3},
        {"query": "x", "mode": "fuzzy"},
    ):
        result = await client.call_tool("search", bad)
        assert result.is_error, bad
    missing = await client.call_tool("search", {"query": "x", "collections": ["nope"]})
    assert missing.is_error and "collection 'nope' does not exist" in missing.content[0].text
    bad_filter = await client.call_tool("search", {"query": "x", "filter": {"k": {"a": 1}}})
    assert bad_filter.is_error and "filter" in bad_filter.content[0].text
    past = await client.call_tool("get", {"document": top["document_id"], "line_start": 99})
    assert past.is_error and "past the end" in past.content[0].text
    nothing = await client.call_tool("get", {"document": "/no/such/file.md"})
    assert nothing.is_error and "no document" in nothing.content[0].text


async def test_stdio(live: LiveDaemon) -> None:
    notes = Path(live.extra_env["NOTES"])
    searches = live.metric("localrank_requests_total", route="/v1/search")
    async with Client(stdio(live)) as client:
        assert client.protocol_version == "2026-07-28"
        await exercise(client, notes)
    # The MCP server is a client of the daemon: its searches went through it.
    assert live.metric("localrank_requests_total", route="/v1/search") > searches


async def test_stdio_with_a_2025_era_client(live: LiveDaemon) -> None:
    async with Client(stdio(live), mode="legacy") as client:
        assert client.protocol_version != "2026-07-28"
        assert {t.name for t in (await client.list_tools()).tools} == READ_TOOLS
        out = structured(await client.call_tool("search", {"query": "moon and ocean tides"}))
        assert out["results"][0]["citation"]["source"].endswith("tides.md")


async def test_index_tools_only_with_allow_index(live: LiveDaemon, tmp_path: Path) -> None:
    folder = tmp_path / "more"
    folder.mkdir()
    (folder / "owl.md").write_text("# Owls\n\nOwls hunt at night and see in the dark.\n")
    async with Client(stdio(live, "--allow-index")) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert names == READ_TOOLS | {"index_folder", "unwatch"}
        relative = await client.call_tool("index_folder", {"path": "more", "collection": "more"})
        assert relative.is_error and "absolute" in relative.content[0].text
        out = structured(
            await client.call_tool(
                "index_folder", {"path": str(folder), "collection": "more", "watch": True}
            )
        )
        assert out["changed"] == 1 and out["watch"]["path"] == folder.resolve().as_posix()
        assert live.wait_job(out["job_id"])["state"] == "done"
        hit = structured(
            await client.call_tool("search", {"query": "night birds", "collections": ["more"]})
        )
        assert hit["results"][0]["citation"]["source"].endswith("owl.md")
        status = structured(await client.call_tool("status", {}))
        assert [w["path"] for w in status["watched_folders"]] == [folder.resolve().as_posix()]
        gone = structured(await client.call_tool("unwatch", {"folder": str(folder)}))
        assert len(gone["removed"]) == 1
        assert structured(await client.call_tool("status", {}))["watched_folders"] == []
    assert request(f"{live.url}/v1/collections/more", method="DELETE")[0] == 200


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        try:
            request(f"http://127.0.0.1:{port}/mcp", timeout=1)
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("the MCP HTTP server did not start")


def raw_post(port: int, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """A bare JSON-RPC POST, to see what the access rules answer before MCP runs."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}})
    conn.request(
        "POST",
        "/mcp",
        body=body,
        headers={
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
            **headers,
        },
    )
    r = conn.getresponse()
    raw = r.read()
    conn.close()
    return r.status, json.loads(raw) if raw.startswith(b"{") else {}


async def test_streamable_http_behind_the_daemons_rules(live: LiveDaemon) -> None:
    port = free_port()
    env = {**live.env, "LOCALRANK_TOKEN": "s3cret"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "localrank", "mcp", "--http", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_port(port, proc)
        assert proc.stderr is not None
        # It says where it listens, once it does.
        assert f"listening on http://127.0.0.1:{port}/mcp" in proc.stderr.readline().decode()
        host = f"127.0.0.1:{port}"
        status, body = raw_post(port, {"Host": host})
        assert status == 401 and body["error"]["type"] == "unauthorized"
        status, body = raw_post(port, {"Host": host, "Authorization": "Bearer wrong"})
        assert status == 401 and "not valid" in body["error"]["message"]
        auth = {"Authorization": "Bearer s3cret"}
        status, body = raw_post(port, {"Host": f"evil.example:{port}", **auth})
        assert status == 403 and "evil.example" in body["error"]["message"]
        status, body = raw_post(port, {"Host": host, "Origin": "https://evil.example", **auth})
        assert status == 403 and "web pages" in body["error"]["message"]

        async with httpx2.AsyncClient(headers=auth) as http:
            url = f"http://127.0.0.1:{port}/mcp"
            async with Client(streamable_http_client(url, http_client=http)) as client:
                await exercise(client, Path(live.extra_env["NOTES"]))
            # A 2025-era client over the same endpoint.
            transport = streamable_http_client(url, http_client=http)
            async with Client(transport, mode="legacy") as client:
                assert {t.name for t in (await client.list_tools()).tools} == READ_TOOLS
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        if proc.stderr is not None:
            proc.stderr.close()


async def test_starts_a_daemon_in_process_when_none_answers(
    live: LiveDaemon, tmp_path: Path
) -> None:
    port = free_port()
    env = {**live.env, "LOCALRANK_HOME": str(tmp_path / "home"), "LOCALRANK_PORT": str(port)}
    folder = tmp_path / "notes"
    write_notes(folder)
    async with Client(stdio(live, "--allow-index", env=env)) as client:
        status = structured(await client.call_tool("status", {}))
        assert status["daemon"] == f"http://127.0.0.1:{port}"  # on the configured port
        assert status["status"] in ("loading", "ok")  # the model loads in the background
        empty = await client.call_tool("search", {"query": "bread"})
        assert empty.is_error and "no collections" in empty.content[0].text
        out = structured(
            await client.call_tool("index_folder", {"path": str(folder), "collection": "n"})
        )
        # Other clients find the in-process daemon where the configuration says.
        deadline = time.monotonic() + 60
        while request(f"http://127.0.0.1:{port}/v1/jobs/{out['job_id']}")[1]["state"] != "done":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        hit = structured(await client.call_tool("search", {"query": "lava"}))
        assert hit["results"][0]["citation"]["source"].endswith("volcano.md")
        assert structured(await client.call_tool("status", {}))["model"]["dim"] == 384
    with pytest.raises(OSError):
        request(f"http://127.0.0.1:{port}/health", timeout=2)  # stopped with the MCP server


README = Path(__file__).resolve().parent.parent / "README.md"


def readme_launch_commands() -> dict[str, list[str]]:
    """The launch command of each editor snippet in the README's MCP section, as written."""
    section = README.read_text().split("## Agents and editors (MCP)", 1)[1].split("\n## ", 1)[0]
    blocks = section.split("```")[1::2]
    out: dict[str, list[str]] = {}
    for block in blocks:
        lang, _, body = block.partition("\n")
        if lang == "sh":
            (line,) = [x for x in body.splitlines() if x.startswith("claude mcp add")]
            out["claude"] = line.split(" -- ", 1)[1].split()
            assert line.split()[3] == "localrank"  # the server's name
            continue
        config = json.loads(body)
        (key,) = config
        entry = config[key]["localrank"]
        if key == "servers":  # VS Code
            assert entry["type"] == "stdio"
        out[key] = [entry["command"], *entry["args"]]
    assert set(out) == {"claude", "mcpServers", "servers", "context_servers"}
    return out


async def test_the_readme_snippets_work_as_written(live: LiveDaemon) -> None:
    for editor, argv in readme_launch_commands().items():
        assert argv[0] == "localrank"
        # The editor resolves `localrank` on its PATH (here: the test environment's).
        params = StdioServerParameters(
            command=argv[0],
            args=argv[1:],
            env={
                k: v
                for k, v in live.env.items()
                if k.startswith("LOCALRANK_") or k in ("PATH", "PYTHONPATH")
            },
        )
        async with Client(params) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            assert names == READ_TOOLS, editor
            out = structured(await client.call_tool("search", {"query": "tides and the moon"}))
            assert out["results"][0]["citation"]["source"].endswith("tides.md"), editor


class ThreeLongDocuments:
    """A stand-in for the daemon's client (plumbing only): one collection of three documents
    of 30 lines of 100 characters each."""

    health = {"fingerprint": None}

    def __init__(self) -> None:
        line = "x" * 99 + "\n"
        self.docs = {
            f"d{i}": {"id": f"d{i}", "source": f"/notes/n{i}.md", "metadata": {"path": f"n{i}.md"}}
            for i in range(3)
        }
        self.text = line * 30

    def collections(self) -> list[dict[str, Any]]:
        return [{"name": "notes", "fingerprint": None}]

    def documents(self, name: str, *, limit: int, after: str | None) -> dict[str, Any]:
        return {"documents": list(self.docs.values()), "next_after": None}

    def document(self, name: str, doc_id: str) -> dict[str, Any]:
        if doc_id not in self.docs:
            raise NotFound(f"document {doc_id!r} not found")
        return {**self.docs[doc_id], "text": self.text}


async def test_get_many_keeps_under_its_cap() -> None:
    fake = ThreeLongDocuments()
    server = build_server(DaemonAccess(lambda: fake))  # type: ignore[arg-type, return-value]
    async with Client(server) as client:
        out = structured(
            await client.call_tool("get_many", {"documents": ["n*.md"], "max_chars": 4050})
        )
    first, second = out["documents"]
    assert (first["truncated"], first["text"]) == (False, fake.text)
    # 3000 + 1050 characters: the second is cut after its 10th whole line.
    assert second["truncated"] and second["text"] == fake.text[:1000]
    assert (second["line_start"], second["line_end"], second["total_lines"]) == (1, 10, 30)
    assert out["chars"] == 4000 <= 4050
    assert out["omitted"] == [
        {"collection": "notes", "document_id": "d2", "source": "/notes/n2.md"}
    ]


MALFORMED = {
    "not JSON": ("{oops", None, -32700),
    "wrong jsonrpc": ('{"jsonrpc": "1.0", "id": 3, "method": "ping"}', 3, -32600),
    "no method": ('{"jsonrpc": "2.0", "id": 4}', 4, -32600),
    "string params": ('{"jsonrpc": "2.0", "id": 5, "method": "ping", "params": "x"}', 5, -32600),
    "an array": ("[1, 2]", None, -32600),
    "not UTF-8": ("\udcff", None, -32700),
}


def test_stdio_answers_malformed_lines_with_jsonrpc_errors(live: LiveDaemon) -> None:
    """Issue 20, reproduction 9: over stdio such a line got no reply at all (the HTTP transport
    answers 400); the session carries on after each."""
    lines = [line for line, _, _ in MALFORMED.values()]
    lines.append('{"jsonrpc": "2.0", "id": 99, "method": "ping"}')
    data = "".join(f"{line}\n" for line in lines).encode("utf-8", "surrogateescape")
    # stdin stays open until every reply came: at end of input a server may drop what is still
    # in flight (an editor closes it only when it is done), which is not what this tests.
    proc = subprocess.Popen(
        [LOCALRANK, "mcp"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=live.env,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(data)
    proc.stdin.flush()
    replies = []
    watchdog = threading.Timer(60, proc.kill)  # a server that never answers ends the read
    watchdog.start()
    try:
        while len(replies) < len(lines):
            line = proc.stdout.readline()
            if not line:
                break
            replies.append(json.loads(line))
        proc.stdin.close()
        returncode = proc.wait(timeout=30)
    finally:
        watchdog.cancel()
        proc.kill()
    assert returncode == 0, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
    assert len(replies) == len(lines), replies
    for (what, (_, request_id, code)), reply in zip(MALFORMED.items(), replies, strict=False):
        assert reply["jsonrpc"] == "2.0" and reply["id"] == request_id, (what, reply)
        assert reply["error"]["code"] == code, (what, reply)
    assert replies[-1] == {"jsonrpc": "2.0", "id": 99, "result": {}}
