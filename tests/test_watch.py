"""Folders that stay indexed, on the daemon's real app (`make_app`, its collections context runs
the watcher) with a hashed bag-of-tokens backend for the forward pass: files created, changed,
renamed and deleted show up in search within seconds; the watch survives a restart; 1,000 files
created at once are indexed once each; the polling fallback does the same job."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from fake_embedder import hash_loader

from localrank.config import load_settings
from localrank.serve.app import make_app
from localrank.serve.state import STATE_KEY

DEADLINE = 15.0  # generous for a loaded CI machine; the bench measures the real latency


def daemon(home: Path, minilm: Path, **settings: Any) -> web.Application:
    flags = {"home": str(home), "watch_debounce_ms": 200, **settings}
    return make_app(load_settings(flags, environ={}), loader=hash_loader(minilm))


async def started(aiohttp_client, app: web.Application):  # type: ignore[no-untyped-def]
    client = await aiohttp_client(app)
    await app[STATE_KEY].ready.wait()
    assert app[STATE_KEY].models is not None, app[STATE_KEY].load_error
    return client


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> float:
    """Poll `check` until true; returns the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < DEADLINE:
        if await check():
            return time.monotonic() - start
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {DEADLINE}s: {what}")


async def found(client, word: str) -> list[str]:  # type: ignore[no-untyped-def]
    r = await client.post(
        "/v1/search", json={"collection": "notes", "query": word, "mode": "keyword", "top_k": 50}
    )
    assert r.status == 200, await r.text()
    return [x["document_id"] for x in (await r.json())["results"]]


async def watching(client) -> dict:  # type: ignore[no-untyped-def]
    (w,) = (await (await client.get("/v1/watches")).json())["watches"]
    return w


async def wait_watching(client) -> None:  # type: ignore[no-untyped-def]
    async def ready() -> bool:
        return (await watching(client))["state"] == "watching"

    await eventually(ready, "the watch is watching")


@pytest.mark.parametrize("polling", ["never", "always"])
async def test_create_change_rename_delete_show_up_in_search(
    aiohttp_client,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    minilm: Path,
    polling: str,
) -> None:
    folder = tmp_path / "notes"
    (folder / "sub").mkdir(parents=True)
    (folder / "old.md").write_text("# Old\n\nan existing zebra note\n")
    client = await started(aiohttp_client, daemon(tmp_path / "home", minilm, watch_polling=polling))
    r = await client.post("/v1/watches", json={"collection": "notes", "path": str(folder)})
    assert r.status == 201, await r.text()
    await wait_watching(client)
    root = folder.resolve().as_posix()
    assert await found(client, "zebra") == [f"{root}/old.md"]
    assert (await watching(client))["polling"] is (polling == "always")

    async def only(word: str, ids: list[str]) -> bool:
        return sorted(await found(client, word)) == sorted(ids)

    # create
    (folder / "a.md").write_text("# A\n\nthe quokka lives here\n")
    await eventually(lambda: only("quokka", [f"{root}/a.md"]), "a created file is searchable")
    # change
    (folder / "a.md").write_text("# A\n\nthe narwhal lives here now\n")
    await eventually(lambda: only("narwhal", [f"{root}/a.md"]), "a change is searchable")
    await eventually(lambda: only("quokka", []), "the old text is gone")
    # rename
    (folder / "a.md").rename(folder / "sub" / "b.md")
    await eventually(lambda: only("narwhal", [f"{root}/sub/b.md"]), "a rename moves the id")
    # a folder moved in from outside, then deleted as a whole
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "c.md").write_text("an axolotl swims\n")
    outside.rename(folder / "moved")
    await eventually(lambda: only("axolotl", [f"{root}/moved/c.md"]), "a moved-in folder")
    shutil.rmtree(folder / "moved")
    await eventually(lambda: only("axolotl", []), "a deleted folder's documents go")
    # delete
    (folder / "sub" / "b.md").unlink()
    await eventually(lambda: only("narwhal", []), "a deleted file's document goes")
    # a file that cannot be read is reported, and the watch goes on
    (folder / "bad.md").write_bytes(b"\xff\xfe not utf-8")
    (folder / "d.md").write_text("a capybara appears\n")
    await eventually(lambda: only("capybara", [f"{root}/d.md"]), "files after a bad one")

    async def reported() -> bool:
        return any("bad.md" in e and "UTF-8" in e for e in (await watching(client))["errors"])

    await eventually(reported, "the unreadable file is reported")
    # .gitignore changes apply to what is indexed
    (folder / ".gitignore").write_text("d.md\n")
    await eventually(lambda: only("capybara", []), "a newly ignored file leaves the index")

    r = await client.delete(f"/v1/watches/{(await watching(client))['id']}")
    assert r.status == 200
    assert (await (await client.get("/v1/watches")).json())["watches"] == []
    assert await found(client, "zebra") == [f"{root}/old.md"]  # documents stay


async def test_the_watch_survives_a_daemon_restart(
    aiohttp_client,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    minilm: Path,
) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "keep.md").write_text("the pangolin stays\n")
    (folder / "gone.md").write_text("the dodo leaves\n")
    home = tmp_path / "home"
    first = await started(aiohttp_client, daemon(home, minilm))
    assert (await first.post("/v1/collections", json={"name": "notes"})).status == 201
    r = await first.post("/v1/collections/notes/index", json={"path": str(folder), "watch": True})
    body = await r.json()
    assert r.status == 200 and body["changed"] == 2 and body["watch"]["path"]
    await wait_watching(first)
    root = folder.resolve().as_posix()
    await eventually(
        lambda: _equals(found(first, "dodo"), [f"{root}/gone.md"]), "indexed before the restart"
    )
    await first.close()  # the daemon stops

    # Changes while no daemon runs.
    (folder / "gone.md").unlink()
    (folder / "new.md").write_text("the okapi arrives\n")

    second = await started(aiohttp_client, daemon(home, minilm))
    w = await watching(second)
    assert w["path"] == root and w["collection"] == "notes"
    await wait_watching(second)
    assert await found(second, "okapi") == [f"{root}/new.md"]
    assert await found(second, "dodo") == []
    assert await found(second, "pangolin") == [f"{root}/keep.md"]
    # and it keeps watching
    (folder / "later.md").write_text("the tapir follows\n")
    await eventually(
        lambda: _equals(found(second, "tapir"), [f"{root}/later.md"]), "watched after restart"
    )


async def _equals(value: Awaitable[list[str]], expected: list[str]) -> bool:
    return await value == expected


async def test_a_thousand_files_created_at_once_are_indexed_once_each(
    aiohttp_client,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    minilm: Path,
) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    app = daemon(tmp_path / "home", minilm)
    client = await started(aiohttp_client, app)
    r = await client.post("/v1/watches", json={"collection": "notes", "path": str(folder)})
    assert r.status == 201
    await wait_watching(client)

    def create() -> None:
        for i in range(1000):
            (folder / f"f{i:04d}.md").write_text(f"file number {i} token{i} " * 3)

    await asyncio.to_thread(create)

    async def all_in() -> bool:
        r = await client.get("/v1/collections/notes")
        return (await r.json())["documents"] == 1000

    await eventually(all_in, "1,000 files indexed")
    await asyncio.sleep(1.0)  # let any duplicate work show itself
    w = await watching(client)
    collection = await (await client.get("/v1/collections/notes")).json()
    metrics = await (await client.get("/metrics")).text()
    embedded = sum(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("localrank_embedded_inputs_total")
    )
    # Each file written once (never created then rewritten), each chunk embedded once.
    assert w["indexed"] == 1000 and w["errors"] == []
    assert collection["chunks"] == 1000
    assert embedded == 1000
    assert await found(client, "token777") == [f"{folder.resolve().as_posix()}/f0777.md"]


async def test_watch_requests_are_validated(aiohttp_client, tmp_path: Path, minilm: Path) -> None:  # type: ignore[no-untyped-def]
    client = await started(aiohttp_client, daemon(tmp_path / "home", minilm))
    cases = [
        ("post", "/v1/watches", {"collection": "n", "path": "relative/dir"}, 422),
        ("post", "/v1/watches", {"collection": "n"}, 422),
        # A folder that does not exist: 404, as for indexing it (test_schema_agreement.py).
        ("post", "/v1/watches", {"collection": "n", "path": str(tmp_path / "missing")}, 404),
        ("post", "/v1/watches", {"collection": 5, "path": str(tmp_path)}, 422),
        ("post", "/v1/watches", {"collection": "n", "path": str(tmp_path), "include": "*"}, 422),
        ("post", "/v1/collections/n/index", {"path": str(tmp_path / "missing")}, 404),
        ("post", "/v1/collections/n/index", {"path": str(tmp_path), "watch": "yes"}, 422),
        ("delete", "/v1/watches/99", None, 404),
        ("delete", "/v1/watches/abc", None, 422),
    ]
    for method, url, body, status in cases:
        r = (
            await getattr(client, method)(url, json=body)
            if body
            else await getattr(client, method)(url)
        )
        assert r.status == status, (url, body, await r.text())
        assert (await r.json())["error"]["message"]


async def test_a_vanished_folder_keeps_its_documents_until_it_returns(
    aiohttp_client,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    minilm: Path,
) -> None:
    """An unmounted volume or a folder moved away is not a mass delete."""
    folder = tmp_path / "volume"
    folder.mkdir()
    (folder / "a.md").write_text("the wombat digs\n")
    client = await started(aiohttp_client, daemon(tmp_path / "home", minilm))
    assert (
        await client.post("/v1/watches", json={"collection": "notes", "path": str(folder)})
    ).status == 201
    await wait_watching(client)
    root = folder.resolve().as_posix()
    assert await found(client, "wombat") == [f"{root}/a.md"]
    away = tmp_path / "elsewhere"
    folder.rename(away)

    async def missing() -> bool:
        return (await watching(client))["state"] == "missing"

    await eventually(missing, "the watch notices the folder is gone")
    assert await found(client, "wombat") == [f"{root}/a.md"]  # kept
    away.rename(folder)
    (folder / "b.md").write_text("the echidna returns\n")
    await wait_watching(client)
    await eventually(
        lambda: _equals(found(client, "echidna"), [f"{root}/b.md"]), "watched again on return"
    )
    assert await found(client, "wombat") == [f"{root}/a.md"]


async def test_deleting_a_collection_stops_its_watches(
    aiohttp_client, tmp_path: Path, minilm: Path
) -> None:  # type: ignore[no-untyped-def]
    """A collection's watches go with it, their tasks too: a collection created under the same
    name afterwards stays empty (the deleted watch's task used to write the folder into it until
    the watcher's next reconciliation, up to 30 s later; found by the stateful fuzz run)."""
    client = await started(aiohttp_client, daemon(tmp_path / "home", minilm))
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "a.md").write_text("the wombat digs\n")
    r = await client.post("/v1/watches", json={"collection": "z", "path": str(folder)})
    assert r.status == 201, await r.text()
    await wait_watching(client)
    assert (await client.delete("/v1/collections/z")).status == 200
    assert (await (await client.get("/v1/watches")).json())["watches"] == []
    assert (await client.post("/v1/collections", json={"name": "z"})).status == 201
    (folder / "b.md").write_text("the echidna returns\n")  # a change the old task would sync
    await asyncio.sleep(3.0)  # well past the debounce and a sync
    page = await (await client.get("/v1/collections/z/documents")).json()
    assert page["documents"] == []
