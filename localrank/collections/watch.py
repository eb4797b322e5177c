"""Folders that stay indexed: the daemon watches each registered folder and keeps its collection
in step with it.

Each watch (a row in the store, so it survives restarts) gets one task:

1. it starts the file watcher (`watchfiles`: inotify / FSEvents / ReadDirectoryChangesW, the
   library uvicorn reloads with; polling where native events are not available: a network or
   FUSE file system, a failed native watcher, or when forced by the `watch_polling` setting);
2. once the watcher runs, it syncs the whole folder (changes made while no daemon ran): new and
   changed files are written (unchanged ones skipped by content hash), files that are gone are
   removed;
3. then it applies each debounced batch of changes: a saved file is re-read and re-embedded
   if its text changed, a deleted one removed, a renamed one removed under its old path and
   stored under its new one (its chunks' vectors come back from the embedding cache), a folder
   moved in or out is read or removed as a whole, and a changed `.gitignore` / `.ignore`
   resyncs the folder under the new rules.

Writes go through the Ingestor in batches of `job_batch_docs` documents (one transaction each),
as bulk work behind interactive requests. A file that cannot be read or embedded is reported
in the watch's status (`errors`) and skipped. A folder that disappears (an unmounted volume)
keeps its documents; the watch waits for it to come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread
import watchfiles

from localrank.collections.documents import DocumentIn
from localrank.collections.files import IGNORE_FILES, FolderOptions, FolderReader
from localrank.collections.folders import plan
from localrank.collections.ingest import TRANSIENT_CODES, Ingestor
from localrank.errors import LocalrankError
from localrank.store import Store
from localrank.store.records import Watch

log = logging.getLogger(__name__)
T = TypeVar("T")

# File systems that deliver no (or unreliable) native change events: poll them instead.
POLLED_FILESYSTEMS = frozenset(
    {"nfs", "nfs4", "cifs", "smbfs", "smb3", "9p", "afs", "ncpfs", "davfs", "sshfs"}
)
MAX_ERRORS_KEPT = 20
TICK_MS = 1000  # the watcher wakes this often without changes (readiness, a vanished folder)
RETRY_SECONDS = 2.0
RECHECK_SECONDS = 0.5  # a file read by the watcher is looked at again this long after


@dataclass(frozen=True)
class WatchSettings:
    """How watching behaves (from the daemon's Settings)."""

    debounce_ms: int = 1000  # longest a burst of changes is gathered before it is applied
    step_ms: int = 100  # quiet time that ends a burst
    polling: str = "auto"  # auto | always | never
    poll_delay_ms: int = 300


@dataclass
class WatchStatus:
    """What a watch is doing, for `GET /v1/watches` and the MCP `status` tool."""

    watch: Watch
    state: str = "starting"  # starting | syncing | watching | missing | error
    polling: bool = False
    last_sync: str | None = None
    indexed: int = 0  # documents written (new or changed)
    removed: int = 0
    pending: int = 0  # files waiting to be applied
    errors: deque[str] = field(default_factory=lambda: deque(maxlen=MAX_ERRORS_KEPT))

    def to_api(self) -> dict[str, Any]:
        return {
            **self.watch.to_api(),
            "state": self.state,
            "polling": self.polling,
            "last_sync": self.last_sync,
            "indexed": self.indexed,
            "removed": self.removed,
            "pending": self.pending,
            "errors": list(self.errors),
        }


def filesystem_type(path: Path) -> str | None:
    """The type of the file system `path` is on (Linux: from /proc/self/mounts), or None."""
    if not sys.platform.startswith("linux"):
        return None
    best, kind = "", None
    try:
        with open("/proc/self/mounts", encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mount = parts[1].replace("\\040", " ")
                inside = str(path) == mount or str(path).startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best):
                    best, kind = mount, parts[2]
    except OSError:
        return None
    return kind


def needs_polling(path: Path) -> bool:
    """True for folders on file systems without native change events."""
    kind = filesystem_type(path) or ""
    return kind in POLLED_FILESYSTEMS or kind.startswith("fuse.")


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in a worker thread. A cancelled caller still waits for the thread to finish,
    so the store is never closed under a running statement at shutdown."""
    future = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await future
        raise


def _stamps(paths: Iterable[Path]) -> dict[Path, tuple[int, int, float]]:
    """(size, mtime, when) of each file, taken just before it is read."""
    out: dict[Path, tuple[int, int, float]] = {}
    now = time.monotonic()
    for p in paths:
        try:
            st = p.stat()
        except OSError:
            continue
        out[p] = (st.st_size, st.st_mtime_ns, now)
    return out


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class FolderWatcher:
    """Runs one task per registered watch; `reload()` after adding or removing one."""

    def __init__(
        self,
        store: Store,
        ingestor: Ingestor,
        settings: WatchSettings | None = None,
    ) -> None:
        self.store = store
        self.ingestor = ingestor
        self.settings = settings or WatchSettings()
        self.status: dict[int, WatchStatus] = {}
        self._tasks: dict[int, tuple[Watch, asyncio.Task[None]]] = {}
        self._reload: asyncio.Event | None = None
        self.running = False

    def reload(self) -> None:
        """The registered watches changed: start and stop tasks to match."""
        if self._reload is not None:
            self._reload.set()

    async def stop(self, collection: str) -> None:
        """Stop now the tasks that write into `collection` (its watches were deleted with it):
        left to the next reconciliation, one would write the folder into a collection of the
        same name created meanwhile."""
        for wid, (watch, task) in list(self._tasks.items()):
            if watch.collection == collection:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
                if self._tasks.get(wid, (None, None))[1] is task:
                    del self._tasks[wid]
                    self.status.pop(wid, None)
        self.reload()

    def statuses(self) -> dict[int, dict[str, Any]]:
        """Each running watch's status by watch id."""
        return {i: s.to_api() for i, s in self.status.items()}

    async def run_forever(self) -> None:
        """Until cancelled: keep one task per registered watch."""
        self._reload = asyncio.Event()
        self.running = True
        try:
            while True:
                self._reload.clear()
                try:
                    await self._sync_tasks()
                except LocalrankError as exc:  # the store is busy or closing: try again
                    log.warning("watches: %s", exc.message)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._reload.wait(), 30.0)
        finally:
            self.running = False
            tasks = [t for _, t in self._tasks.values()]
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            self._tasks.clear()

    async def _sync_tasks(self) -> None:
        watches = {w.id: w for w in await _in_thread(self.store.list_watches)}
        for wid, (watch, task) in list(self._tasks.items()):
            if watches.get(wid) != watch or task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
                del self._tasks[wid]
                self.status.pop(wid, None)
        for wid, watch in watches.items():
            if wid not in self._tasks:
                self.status[wid] = WatchStatus(watch)
                task = asyncio.create_task(self._run(watch), name=f"localrank-watch-{wid}")
                self._tasks[wid] = (watch, task)
        # Each native watcher blocks one of anyio's worker threads while it waits for events.
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = max(limiter.total_tokens, len(self._tasks) + 40)

    # --- one watch --------------------------------------------------------------------------

    async def _run(self, watch: Watch) -> None:
        status = self.status[watch.id]
        root = Path(watch.root)
        reader = FolderReader(
            root, FolderOptions.from_dict(watch.options), self.ingestor.settings.max_document_bytes
        )
        mode = self.settings.polling
        polling = mode == "always" or (mode == "auto" and needs_polling(root))
        while True:
            if not root.exists():
                status.state = "missing"
                await asyncio.sleep(RETRY_SECONDS)
                continue
            status.polling = polling
            try:
                await self._watch(watch, reader, status, polling)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a native watcher that cannot start, a library error
                message = f"{type(exc).__name__}: {exc}"
                if not polling and mode != "never":
                    log.warning("watch %s: native file events failed (%s); polling", root, message)
                    polling = True
                    continue
                status.state = "error"
                status.errors.append(message)
                log.warning("watch %s: %s", root, message)
                await asyncio.sleep(RETRY_SECONDS)

    async def _watch(
        self, watch: Watch, reader: FolderReader, status: WatchStatus, polling: bool
    ) -> None:
        queue: asyncio.Queue[set[tuple[watchfiles.Change, str]]] = asyncio.Queue()
        ready = asyncio.Event()
        recheck: dict[Path, tuple[int, int, float]] = {}
        root = Path(watch.root)

        async def produce() -> None:
            async for changes in watchfiles.awatch(
                root,
                debounce=self.settings.debounce_ms,
                step=self.settings.step_ms,
                rust_timeout=TICK_MS,
                yield_on_timeout=True,
                force_polling=polling,
                poll_delay_ms=self.settings.poll_delay_ms,
                ignore_permission_denied=True,
            ):
                ready.set()
                queue.put_nowait(changes)

        producer = asyncio.create_task(produce(), name=f"localrank-watch-events-{watch.id}")
        try:
            # Sync only once events are being recorded, so nothing saved meanwhile is missed.
            waiter = asyncio.create_task(ready.wait())
            await asyncio.wait({waiter, producer}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if producer.done():
                producer.result()  # raises what stopped the watcher
                return
            await self._sync_all(watch, reader, status)
            status.state = "watching"
            while True:
                getter = asyncio.create_task(queue.get())
                await asyncio.wait({getter, producer}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    producer.result()
                    return  # the watcher ended (the folder went away): start over
                changes = getter.result()
                while not queue.empty():
                    changes |= queue.get_nowait()
                if not changes:
                    if not root.exists():
                        return
                    changes = await _in_thread(self._moved_since_read, reader, recheck)
                    if not changes:
                        continue
                await self._apply(watch, reader, status, changes, recheck)
        finally:
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await producer

    async def _ready_embedder(self) -> None:
        """Wait for the model (the daemon loads it after it starts listening)."""
        while True:
            try:
                self.ingestor.get_embedder()
                return
            except LocalrankError:
                await asyncio.sleep(0.5)

    async def _quiet_jobs(self, collection: str) -> None:
        """Wait while a job writes to the collection (e.g. the `localrank index` that registered
        this watch), so the first sync does not embed the same files again."""
        while True:
            jobs = await _in_thread(lambda: self.store.list_jobs(limit=200))
            if not any(j.collection == collection and not j.finished for j in jobs):
                return
            await asyncio.sleep(0.5)

    async def _sync_all(self, watch: Watch, reader: FolderReader, status: WatchStatus) -> None:
        status.state = "syncing"
        await self._ready_embedder()
        await self._quiet_jobs(watch.collection)
        if reader.rules is not None:
            reader.rules.forget()
        scan = await _in_thread(reader.scan)
        for s in scan.skipped:
            status.errors.append(s)
        await self._write(watch, status, scan.documents, reader.root.as_posix(), prune=True)
        # A watch mirrors the folder under its rules: files it no longer reads (newly ignored or
        # excluded) leave the collection too. Files it cannot read are only reported.
        collection = await _in_thread(self.store.get_collection, watch.collection)
        stored = await _in_thread(self.store.document_files, collection, reader.root.as_posix())
        read = {d.id for d in scan.documents} | {s.split(": ", 1)[0] for s in scan.skipped}
        unwanted = [
            f.doc_id
            for f in stored
            if f.doc_id not in read
            and Path(f.source).exists()
            and not reader.wanted(Path(f.source))
        ]
        if unwanted:
            status.removed += await _in_thread(
                self.store.delete_documents, watch.collection, unwanted
            )
        status.last_sync = _now()

    async def _apply(
        self,
        watch: Watch,
        reader: FolderReader,
        status: WatchStatus,
        changes: set[tuple[watchfiles.Change, str]],
        recheck: dict[Path, tuple[int, int, float]] | None = None,
    ) -> None:
        paths = {Path(p) for _, p in changes}
        status.pending = len(paths)
        try:
            if any(p.name in IGNORE_FILES for p in paths):
                await self._sync_all(watch, reader, status)  # the rules changed: start over
                return
            await self._ready_embedder()
            to_read, gone = await _in_thread(self._classify, reader, paths)
            if recheck is not None:
                recheck.update(await _in_thread(_stamps, to_read))
            scan = await _in_thread(reader.read_all, sorted(to_read))
            for s in scan.skipped:
                status.errors.append(s)  # reported and left as it was stored
            await self._write(watch, status, scan.documents, None, prune=False)
            await self._remove(watch, status, gone)
            status.last_sync = _now()
        finally:
            status.pending = 0

    @staticmethod
    def _moved_since_read(
        reader: FolderReader, recheck: dict[Path, tuple[int, int, float]]
    ) -> set[tuple[watchfiles.Change, str]]:
        """Files whose size or time changed since they were read, without an event saying so:
        a file read between its truncation and its write, when both fall in one tick of the
        file system's clock, which a poller cannot see. Checked once, a moment after the
        read."""
        out: set[tuple[watchfiles.Change, str]] = set()
        now = time.monotonic()
        for path, (size, mtime, read_at) in list(recheck.items()):
            if now - read_at < RECHECK_SECONDS:
                continue
            del recheck[path]
            try:
                st = path.stat()
            except OSError:
                continue
            if (st.st_size, st.st_mtime_ns) != (size, mtime):
                out.add((watchfiles.Change.modified, str(path)))
        return out

    @staticmethod
    def _classify(reader: FolderReader, paths: Iterable[Path]) -> tuple[set[Path], list[Path]]:
        """(files to read, paths whose documents go): folders that appeared are read whole."""
        to_read: set[Path] = set()
        gone: list[Path] = []
        for path in paths:
            if path == reader.root:
                continue  # the folder itself: a vanished folder keeps its documents
            if path.is_dir():
                if reader.wanted(path, is_dir=True):
                    to_read.update(reader.files(under=path))
            elif path.is_file():
                if reader.wanted(path):
                    to_read.add(path)
                else:
                    gone.append(path)  # now excluded or ignored: no longer part of the folder
            else:
                gone.append(path)
        return to_read, gone

    async def _remove(self, watch: Watch, status: WatchStatus, paths: Sequence[Path]) -> None:
        if not paths:
            return
        collection = await _in_thread(self.store.get_collection, watch.collection)

        def stored_under() -> list[str]:
            ids: list[str] = []
            for p in paths:
                ids.extend(f.doc_id for f in self.store.document_files(collection, p.as_posix()))
            return ids

        ids = await _in_thread(stored_under)
        if ids:
            n = await _in_thread(self.store.delete_documents, watch.collection, ids)
            status.removed += n

    async def _write(
        self,
        watch: Watch,
        status: WatchStatus,
        docs: Sequence[DocumentIn],
        scope: str | None,
        *,
        prune: bool,
    ) -> None:
        """Write what changed among `docs`; with `scope` (the whole folder), also delete what
        the collection holds under it that is gone (with `prune`) or stored under an old id."""
        collection = await _in_thread(self.store.get_collection, watch.collection)

        def stored() -> list[Any]:
            if scope is not None:
                return self.store.document_files(collection, scope)
            out = []
            for d in docs:
                out.extend(self.store.document_files(collection, d.source or d.id))
            return out

        p = plan(docs, await _in_thread(stored), prune=prune)
        step = self.ingestor.settings.job_batch_docs
        for s in range(0, len(p.changed), step):
            status.indexed += await self._upsert(watch, status, p.changed[s : s + step])
        dead = [*p.replaced, *p.gone]
        if dead:
            status.removed += await _in_thread(self.store.delete_documents, watch.collection, dead)

    async def _upsert(self, watch: Watch, status: WatchStatus, docs: Sequence[DocumentIn]) -> int:
        """Store a batch; on failure retry document by document, recording the ones that fail.
        Returns how many documents were written."""
        for attempt in range(30):
            try:
                out = await self.ingestor.upsert(watch.collection, docs)
                return sum(1 for d in out["documents"] if d["status"] in ("created", "updated"))
            except LocalrankError as exc:
                if exc.code in TRANSIENT_CODES and attempt < 29:
                    await asyncio.sleep(1.0)
                    continue
                if len(docs) == 1:
                    status.errors.append(f"{docs[0].id}: {exc.message}")
                    log.warning("watch %s: %s: %s", watch.root, docs[0].id, exc.message)
                    return 0
                break
        written = 0
        for d in docs:
            written += await self._upsert(watch, status, [d])
        return written
