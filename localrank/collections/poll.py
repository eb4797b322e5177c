"""Watching a folder by polling, for file systems without native change events (a network or
FUSE mount), a native watcher that cannot start, or when the `watch_polling` setting says so.

The library's own poller follows symlinks, so one loop (`ln -s b.md a.md; ln -s a.md b.md`)
stops it for good, and `ln -s .. up` walks the parent. This one looks at the folder the way
the folder reader does: directory symlinks are not followed, a link is compared by its own
`lstat`, folders no one indexes (`.git`, `node_modules`) are not entered.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

from localrank.collections.files import IGNORED_DIRS

# (file type, size, mtime, inode) of each entry, by path
Snapshot = dict[str, tuple[int, int, int, int]]


def snapshot(root: Path) -> Snapshot | None:
    """Every entry under `root` (not following directory symlinks), or None when `root` is
    gone (also when it went while it was walked: a partial walk would look like deletions)."""
    if not root.is_dir():
        return None
    out: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in IGNORED_DIRS]
        for name in (*dirnames, *filenames):
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue  # gone since it was listed
            out[path] = (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns, st.st_ino)
    return out if root.is_dir() else None


def compare(before: Snapshot, after: Snapshot) -> set[str]:
    """The paths that appeared, went or changed between two snapshots (what the watch then
    looks at, whatever happened to them). A path whose kind changed (a file replaced by a
    folder) changed; a folder's own time is no change (its entries report themselves)."""
    out = set(before.keys() ^ after.keys())
    for path, now in after.items():
        was = before.get(path)
        if was is not None and was != now and not (was[0] == now[0] == stat.S_IFDIR):
            out.add(path)
    return out


async def poll_folder(root: Path, delay_ms: int) -> AsyncIterator[set[str]]:
    """Yields the changes under `root` every `delay_ms` (an empty set when nothing changed,
    like the native watcher's tick); returns when `root` is gone."""
    before = await asyncio.to_thread(snapshot, root)
    if before is None:
        return
    yield set()  # watching from here on
    while True:
        await asyncio.sleep(delay_ms / 1000)
        after = await asyncio.to_thread(snapshot, root)
        if after is None:
            return
        changes, before = compare(before, after), after
        yield changes
