"""Hostile folders against a live daemon: what is not a document, paths that change kind, and
churn, through a one-shot index and a watch (native events, then polling).

1. One-shot index of a folder holding one note, a symlink to /dev/zero, a FIFO, a socket,
   directory symlinks to `.`, `..` and another tree, and a symlink loop: targets answered
   within 10 s, the one note read and nothing else, the daemon's RSS up by less than 100 MiB.
2. A watch of the same kind of folder (once on native events, once polling): paths change
   kind (a file replaced by a folder, by a FIFO), then `files` files are created, a half of
   them deleted and a quarter rewritten at once. Targets: the collection holds exactly what is
   on disk within 60 s, no ghost, the watch `watching`, no false "No such file" in its errors.
3. SIGTERM with those watches running: the daemon gone within 10 s.

  python -m bench.soak --only hostile --hostile-files 1000
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.kit.daemon import Daemon

TARGET_INDEX_S = 10.0
TARGET_RSS_MIB = 100.0
TARGET_SETTLE_S = 60.0
TARGET_EXIT_S = 10.0

Result = tuple[str, str, bool]


def hostile_folder(folder: Path, outside: Path) -> socket.socket:
    """One note and everything that is not one; returns the bound socket (close it after)."""
    folder.mkdir(parents=True)
    outside.mkdir(parents=True, exist_ok=True)
    (folder / "note.md").write_text("# Note\n\nthe one zebra note\n")
    (outside / "outside.md").write_text("# Outside\n\na giraffe outside the folder\n")
    (folder / "zero.txt").symlink_to("/dev/zero")
    (folder / "random.txt").symlink_to("/dev/urandom")
    os.mkfifo(folder / "pipe.md")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(folder / "sock.md"))
    (folder / "self").symlink_to(".")
    (folder / "up").symlink_to("..")
    (folder / "ext").symlink_to(outside)
    (folder / "a.md").symlink_to("b.md")
    (folder / "b.md").symlink_to("a.md")
    return sock


def release_fifos(folder: Path) -> None:
    """Open each FIFO for writing once, so a reader stuck on one (a regression) lets go."""
    for p in folder.rglob("*"):
        if p.is_fifo():
            with contextlib.suppress(OSError):
                os.close(os.open(p, os.O_WRONLY | os.O_NONBLOCK))


def stored_ids(daemon: Daemon, collection: str) -> set[str]:
    ids: set[str] = set()
    after = ""
    while True:
        query = f"?limit=1000&after={after}" if after else "?limit=1000"
        page = daemon.call("GET", f"/v1/collections/{collection}/documents{query}")
        ids.update(d["id"] for d in page["documents"])
        if not page["next_after"]:
            return ids
        after = page["next_after"]


def wait_for(check: Callable[[], bool], timeout: float) -> float:
    """Seconds until `check()` held (inf if it never did within `timeout`)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(0.25)
    return float("inf")


def the_watch(daemon: Daemon, collection: str) -> dict[str, Any]:
    watches = daemon.call("GET", "/v1/watches")["watches"]
    return next(w for w in watches if w["collection"] == collection)


def one_shot(daemon: Daemon, tmp: Path) -> list[Result]:
    folder = tmp / "index" / "notes"
    sock = hostile_folder(folder, tmp / "index" / "outside")
    try:
        daemon.call("POST", "/v1/collections", {"name": "oneshot"})
        rss_before = daemon.rss()[0]
        start = time.monotonic()
        out = daemon.call(
            "POST", "/v1/collections/oneshot/index", {"path": str(folder)}, timeout=60
        )
        took = time.monotonic() - start
        wanted = {str((folder / "note.md").resolve())}
        settled = wait_for(lambda: stored_ids(daemon, "oneshot") == wanted, 30)
        rss_after = daemon.rss()[0]
    finally:
        sock.close()
        release_fifos(folder)
    grew = rss_after - rss_before
    return [
        (
            "one-shot index of a hostile folder answered within 10 s",
            f"{took:.2f} s, {out['files']} file(s) read, skipped {len(out['skipped'])} "
            f"(the symlink loop)",
            took <= TARGET_INDEX_S and out["files"] == 1,
        ),
        (
            "one-shot index: only the regular file stored",
            f"stored exactly the one note after {settled:.1f} s"
            if settled != float("inf")
            else f"stored {sorted(stored_ids(daemon, 'oneshot'))}",
            settled != float("inf"),
        ),
        (
            "one-shot index: daemon RSS up < 100 MiB (/dev/zero, /dev/urandom unread)",
            f"{rss_before:.0f} -> {rss_after:.0f} MiB ({grew:+.0f})",
            grew < TARGET_RSS_MIB,
        ),
    ]


def watched(daemon: Daemon, tmp: Path, *, label: str, files: int) -> list[Result]:
    collection = f"watch-{label}"
    folder = tmp / label / "notes"
    sock = hostile_folder(folder, tmp / label / "outside")
    (folder / "kind-dir.md").write_text("# Kind\n\na walrus note\n")
    (folder / "kind-fifo.md").write_text("# Kind\n\na narwhal note\n")
    root = folder.resolve()
    try:
        daemon.call("POST", "/v1/collections", {"name": collection})
        daemon.call("POST", "/v1/watches", {"collection": collection, "path": str(folder)})
        up = wait_for(lambda: the_watch(daemon, collection)["state"] == "watching", 120)
        # Kind changes, then churn: `files` created, half deleted, a quarter rewritten.
        start = time.monotonic()
        (folder / "kind-dir.md").unlink()
        (folder / "kind-dir.md").mkdir()
        (folder / "kind-dir.md" / "inner.md").write_text("# Inner\n\nan okapi note\n")
        (folder / "kind-fifo.md").unlink()
        os.mkfifo(folder / "kind-fifo.md")
        churn = folder / "churn"
        churn.mkdir()
        for i in range(files):
            (churn / f"c{i:05d}.md").write_text(f"# Churn {i}\n\nchurned note number {i}\n")
        for i in range(0, files, 2):
            (churn / f"c{i:05d}.md").unlink()
        for i in range(1, files, 4):
            (churn / f"c{i:05d}.md").write_text(f"# Churn {i}\n\nrewritten note {i}\n")
        wanted = {
            str(root / "note.md"),
            str(root / "kind-dir.md" / "inner.md"),
            *(str(root / "churn" / f"c{i:05d}.md") for i in range(1, files, 2)),
        }
        settled = wait_for(lambda: stored_ids(daemon, collection) == wanted, TARGET_SETTLE_S)
        took = time.monotonic() - start
        stored = stored_ids(daemon, collection)
        status = the_watch(daemon, collection)
    finally:
        sock.close()
        release_fifos(folder)
    ghosts = sorted(stored - wanted)
    missing = len(wanted - stored)
    false_errors = sum("No such file" in e for e in status["errors"])
    return [
        (
            f"watch ({label}): the collection holds exactly what is on disk within 60 s",
            f"{len(wanted):,} documents after {files:,} created / {files // 2:,} deleted / "
            f"{files // 4:,} rewritten + 2 kind changes: "
            + (
                f"settled in {settled:.1f} s"
                if settled != float("inf")
                else f"not settled after {took:.0f} s: {len(ghosts)} extra {ghosts[:3]}, "
                f"{missing} missing"
            )
            + f" (watching {up:.1f} s after it was added)",
            settled != float("inf"),
        ),
        (
            f"watch ({label}): still watching, no false 'No such file' errors",
            f"state {status['state']}, last_error {status['last_error']}, "
            f"{len(status['errors'])} error(s) ({false_errors} 'No such file')",
            status["state"] == "watching" and false_errors == 0,
        ),
    ]


def hostile_soak(model: str, *, files: int = 1000) -> list[Result]:
    """The hostile-folder part: (what, figure, passed) lines."""
    results: list[Result] = []
    tmp = Path(tempfile.mkdtemp(prefix="localrank-hostile-"))
    try:
        for label, polling in (("native", "never"), ("polling", "always")):
            daemon = Daemon(
                model, extra=["--backend", "cpu"], env={"LOCALRANK_WATCH_POLLING": polling}
            )
            daemon.start()
            try:
                if label == "native":
                    results += one_shot(daemon, tmp)
                results += watched(daemon, tmp, label=label, files=files)
            finally:
                assert daemon.proc is not None
                proc = daemon.proc
                sent = time.monotonic()
                daemon.stop(timeout=30)
                gone = time.monotonic() - sent
                results.append(
                    (
                        f"SIGTERM with a hostile folder watched ({label}): gone within 10 s",
                        f"{gone:.1f} s (exit code {proc.returncode})",
                        gone <= TARGET_EXIT_S,
                    )
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return results
