"""Folders that hold what is not a document (issue 20): a symlink to /dev/zero, a FIFO, a socket,
symlink loops, directory symlinks to `.`, `..` and another tree, files that grow past the limit
and paths that change kind. Only regular files are read, by `localrank index`, a watch (native
events or polling) and MCP's `index_folder` (the daemon's index route) alike; directory symlinks
are not followed by any of them; a watch stays `watching` through all of it.

Reading a device or a FIFO could hang or exhaust memory on a regression, so the one-shot reads
run in a child process with a memory cap and a timeout."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from test_watch import daemon, eventually, found, started, wait_watching, watching

from localrank.collections.files import FolderReader
from localrank.collections.ingest import Ingestor
from localrank.collections.watch import FolderWatcher, WatchSettings, WatchStatus
from localrank.store import open_store

CHILD_TIMEOUT = 30.0
MEMORY_CAP = 1 << 30  # what a child reading a folder may map: /dev/zero read whole exceeds it


def hostile(folder: Path, outside: Path) -> None:
    """`folder` with one good note and everything that is not one."""
    folder.mkdir(parents=True)
    outside.mkdir(parents=True, exist_ok=True)
    (folder / "good.md").write_text("# Good\n\na zebra note\n")
    (outside / "elsewhere.md").write_text("# Elsewhere\n\na giraffe note outside\n")
    (folder / "zero.txt").symlink_to("/dev/zero")
    os.mkfifo(folder / "pipe.md")
    (folder / "self").symlink_to(".")
    (folder / "up").symlink_to("..")
    (folder / "ext").symlink_to(outside)
    (folder / "a.md").symlink_to("b.md")  # a loop: a.md -> b.md -> a.md
    (folder / "b.md").symlink_to("a.md")


@contextlib.contextmanager
def bound_socket(path: Path) -> Iterator[None]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    try:
        yield
    finally:
        sock.close()


@contextlib.contextmanager
def fifos_released(folder: Path) -> Iterator[None]:
    """On the way out, open each FIFO for writing once: a reader a regression left blocked in
    `open` then returns, so the test ends (and fails) instead of hanging."""
    try:
        yield
    finally:
        for p in folder.rglob("*"):
            if p.is_fifo():
                with contextlib.suppress(OSError):
                    os.close(os.open(p, os.O_WRONLY | os.O_NONBLOCK))


CHILD = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap}))
from localrank.collections.files import read_folder
scan = read_folder(sys.argv[1], max_bytes=int(sys.argv[2]))
print(json.dumps({{"documents": [d.id for d in scan.documents], "skipped": scan.skipped}}))
"""


def scan_in_child(folder: Path, max_bytes: int = 1_000_000) -> dict[str, list[str]]:
    """`read_folder(folder)` in a child capped in memory and time."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD.format(cap=MEMORY_CAP), str(folder), str(max_bytes)],
        capture_output=True,
        timeout=CHILD_TIMEOUT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return dict(json.loads(done.stdout))


def test_only_regular_files_are_read_by_a_one_shot_index(tmp_path: Path) -> None:
    """Reproductions 1-3: /dev/zero was read whole (RSS to 22 GB), a FIFO hung the read,
    `self`/`up`/`ext` were walked by the watcher (the one-shot index must agree)."""
    folder = tmp_path / "notes"
    hostile(folder, tmp_path / "outside")
    with bound_socket(folder / "sock.md"), fifos_released(folder):
        out = scan_in_child(folder)
    assert [Path(d).name for d in out["documents"]] == ["good.md"]
    # The loop cannot be read and says why; devices, FIFOs and sockets are no documents at all.
    reasons = {Path(s.split(": ", 1)[0]).name: s.split(": ", 1)[1] for s in out["skipped"]}
    assert set(reasons) == {"a.md", "b.md"}
    assert all("symbolic links" in r for r in reasons.values()), reasons


def test_a_file_is_never_read_past_the_limit(tmp_path: Path) -> None:
    """A regular file that says it is empty (the kernel's files under /proc do) is still read
    no further than the limit plus one byte: the limit holds while reading, not only on the
    size the file claims."""
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "maps.txt").symlink_to("/proc/self/smaps")  # size 0, ~100 KB of text
    assert os.stat(folder / "maps.txt").st_size == 0
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from localrank.collections.files import FolderReader\n"
        "reader = FolderReader(Path(sys.argv[1]), max_bytes=2000)\n"
        "files = list(reader.files())\n"
        "def rchar():\n"
        "    return int(open('/proc/self/io').read().split('rchar: ')[1].split()[0])\n"
        "before = rchar()\n"
        "scan = reader.read_all(files)\n"
        "print(rchar() - before, scan.skipped)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(folder)],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    read, skipped = done.stdout.split(" ", 1)
    assert "limit" in skipped
    # 2,001 bytes of the file, plus the /proc/self/io read that measures it.
    assert int(read) < 2001 + 2000, done.stdout


def test_the_reader_refuses_what_is_not_a_regular_file_without_blocking(tmp_path: Path) -> None:
    folder = tmp_path / "notes"
    hostile(folder, tmp_path / "outside")
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from localrank.collections.files import FolderReader\n"
        "reader = FolderReader(Path(sys.argv[1]))\n"
        "for name in ('zero.txt', 'pipe.md'):\n"
        "    try:\n"
        "        reader.read(Path(sys.argv[1]) / name)\n"
        "        print(name, 'read')\n"
        "    except Exception as exc:\n"
        "        print(name, exc)\n"
    )
    with fifos_released(folder):
        done = subprocess.run(
            [sys.executable, "-c", code, str(folder)],
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "zero.txt a character device: only regular files are read" in done.stdout
    assert "pipe.md a FIFO: only regular files are read" in done.stdout


def test_a_file_gone_before_it_is_read_is_no_error(tmp_path: Path) -> None:
    """Reproduction 9 (second part): a burst of create-then-delete filled a watch's `errors`
    with false "No such file" entries. A vanished file is simply gone."""
    reader = FolderReader(tmp_path)
    scan = reader.read_all([tmp_path / "created-then-deleted.md"])
    assert scan.skipped == [] and scan.vanished == [tmp_path / "created-then-deleted.md"]
    (tmp_path / "dangling.md").symlink_to(tmp_path / "nowhere.md")
    scan = reader.read_all([tmp_path / "dangling.md"])  # a dangling link is there: reported
    assert len(scan.skipped) == 1 and scan.vanished == []


async def test_the_daemon_index_route_reads_only_regular_files(
    aiohttp_client,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    minilm: Path,
) -> None:
    """What `localrank index` and MCP's `index_folder` send: answered, without the device,
    the FIFO or anything behind a directory symlink."""
    folder = tmp_path / "notes"
    hostile(folder, tmp_path / "outside")
    client = await started(aiohttp_client, daemon(tmp_path / "home", minilm))
    assert (await client.post("/v1/collections", json={"name": "notes"})).status == 201
    with fifos_released(folder):
        r = await asyncio.wait_for(
            client.post("/v1/collections/notes/index", json={"path": str(folder)}), 30
        )
        out = await r.json()
    assert r.status == 200, out
    assert out["files"] == 1 and out["job_id"], out

    async def indexed() -> bool:
        return await found(client, "zebra") == [str((folder / "good.md").resolve())]

    await eventually(indexed, "the one regular file is indexed")
    assert await found(client, "giraffe") == []


@pytest.mark.parametrize("polling", ["never", "always"])
async def test_a_watch_reads_only_regular_files_and_follows_no_directory_symlink(
    aiohttp_client,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    minilm: Path,
    polling: str,
) -> None:
    """Reproductions 2-5: a FIFO kept a watch `syncing` for ever; `ln -s . self` doubled every
    document, `ln -s .. up` walked the parent; a symlink loop put a polling watch in `error`
    for good; a file replaced by a folder stayed searchable."""
    folder = tmp_path / "notes"
    hostile(folder, tmp_path / "outside")
    (folder / "kind.md").write_text("# Kind\n\na walrus note\n")
    (folder / "fifo-later.md").write_text("# Later\n\na narwhal note\n")
    root = folder.resolve()
    client = await started(aiohttp_client, daemon(tmp_path / "home", minilm, watch_polling=polling))
    with fifos_released(folder):
        r = await client.post("/v1/watches", json={"collection": "notes", "path": str(folder)})
        assert r.status == 201, await r.text()
        await wait_watching(client)
        assert await found(client, "zebra") == [str(root / "good.md")]
        assert await found(client, "giraffe") == []
        # While watched: more directory symlinks, another loop, kind changes.
        (folder / "self2").symlink_to(".")
        (folder / "up2").symlink_to("..")
        (folder / "c.md").symlink_to("d.md")
        (folder / "d.md").symlink_to("c.md")
        (folder / "kind.md").unlink()
        (folder / "kind.md").mkdir()
        (folder / "kind.md" / "inner.md").write_text("# Inner\n\nan okapi note\n")
        (folder / "fifo-later.md").unlink()
        os.mkfifo(folder / "fifo-later.md")
        (folder / "new.md").write_text("# New\n\na zebra too\n")

        async def settled() -> bool:
            return await found(client, "okapi") == [str(root / "kind.md" / "inner.md")]

        await eventually(settled, "the folder that replaced a file is indexed")

        async def no_ghosts() -> bool:
            return await found(client, "walrus") == [] and await found(client, "narwhal") == []

        await eventually(no_ghosts, "paths that changed kind leave no document")
        ids = await found(client, "zebra")
        assert sorted(ids) == [str(root / "good.md"), str(root / "new.md")]
        assert await found(client, "giraffe") == []
        w = await watching(client)
        assert w["state"] == "watching" and w["last_error"] is None, w
        assert not any("No such file" in e for e in w["errors"]), w["errors"]


class FailingWatcher(FolderWatcher):
    """A watcher whose file watching fails `failures` times as watchfiles fails (the cause
    inside an exception group from a task group), then runs for real."""

    def __init__(self, *args: Any, failures: int) -> None:
        super().__init__(*args)
        self.failures = failures

    async def _watch(self, watch: Any, reader: Any, status: WatchStatus, polling: bool) -> None:
        if self.failures:
            self.failures -= 1

            async def loop() -> None:
                raise OSError(40, "Too many levels of symbolic links")

            async with anyio.create_task_group() as tg:
                tg.start_soon(loop)
        await super()._watch(watch, reader, status, polling)


async def test_a_failing_watch_says_why_and_is_retried_with_backoff(tmp_path: Path) -> None:
    """Reproduction 4: the message was "ExceptionGroup: unhandled errors in a TaskGroup (1
    sub-exception)" and the watch stayed in `error` for good."""
    folder = tmp_path / "notes"
    folder.mkdir()
    store = open_store(tmp_path / "store.db")
    try:
        store.create_collection("c", fingerprint="fp", model_id="m", dim=8, settings={})
        store.add_watch("c", str(folder), {})
        watcher = FailingWatcher(
            store, Ingestor(store, lambda: None), WatchSettings(polling="never"), failures=2
        )
        task = asyncio.create_task(watcher.run_forever())
        seen: list[tuple[str, str | None, float | None]] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            for s in watcher.statuses().values():
                now = (s["state"], s["last_error"], s["retry_seconds"])
                if not seen or seen[-1] != now:
                    seen.append(now)
            if seen and seen[-1][0] == "watching":
                break
            await asyncio.sleep(0.02)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        store.close()
    errors = [s for s in seen if s[0] == "error"]
    assert [s[2] for s in errors if s[2] is not None] == [2.0, 4.0], seen
    assert all("Too many levels of symbolic links" in (s[1] or "") for s in errors), seen
    assert not any("TaskGroup" in (s[1] or "") for s in errors), seen
    assert seen[-1] == ("watching", None, None), seen
