"""A full disk under the store (a small tmpfs holding the daemon's home): documents sent then are
refused with 507 and a message that says the disk is full, nothing acknowledged before is lost,
and ingestion works again once space is freed. PostgreSQL's disk-full error (SQLSTATE 53100) is
mapped the same way."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_watch import daemon, started


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 6 MB file system of its own (tmpfs): mounting one needs root, which the suite has in
    its container and CI."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path) -> None:
    """Write zeros until the file system says it is full."""
    with path.open("wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()
            os.fsync(f.fileno())


async def test_a_full_disk_is_507_and_nothing_acknowledged_is_lost(
    aiohttp_client, small_disk: Path, minilm: Path
) -> None:  # type: ignore[no-untyped-def]
    client = await started(aiohttp_client, daemon(small_disk / "home", minilm))
    assert (await client.post("/v1/collections", json={"name": "notes"})).status == 201
    acknowledged: list[str] = []
    ballast = small_disk / "ballast"
    fill(ballast)
    refused = None
    for i in range(200):
        doc = {"id": f"d{i}", "text": f"note {i} about volcano{i} " * 200}
        r = await client.post("/v1/collections/notes/documents", json={"documents": [doc]})
        if r.status == 200:
            acknowledged.append(doc["id"])
            continue
        refused = (r.status, dict(r.headers), await r.json())
        break
    assert refused is not None, "the disk never filled"
    status, headers, body = refused
    assert status == 507, body
    assert body["error"]["type"] == "storage_full" and "full" in body["error"]["message"]
    ballast.unlink()
    r = await client.post(
        "/v1/collections/notes/documents", json={"documents": [{"id": "after", "text": "lava"}]}
    )
    assert r.status == 200, await r.text()
    r = await client.get("/v1/collections/notes/documents", params={"limit": "1000"})
    ids = {d["id"] for d in (await r.json())["documents"]}
    assert set(acknowledged) | {"after"} <= ids
