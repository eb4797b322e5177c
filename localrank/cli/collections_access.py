"""The collections as the commands reach them: through the running daemon, or in this process.

`Collections` is what the commands ask for; `DaemonCollections` asks the daemon over HTTP and
`cli.local.LocalCollections` does the work here. `collections_for` picks one, once per command:
both answer the daemon's API documents, so a command prints the same either way. This module
imports only the daemon client; the in-process side is imported only when it is picked.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from localrank.cli.common import Runtime, daemon_for
from localrank.client import DaemonClient
from localrank.config import Settings
from localrank.errors import LocalrankError

FOLLOW_SECONDS = 0.5
Progress = Callable[[dict[str, Any]], None]


class Collections(Protocol):
    """What the collection commands need, wherever the collections are served from."""

    # True when the running daemon does the work (it also watches folders from now on).
    daemon: bool

    def search(self, body: dict[str, Any]) -> dict[str, Any]: ...

    def index(
        self,
        path: Path,
        collection: str,
        options: dict[str, Any],
        *,
        prune: bool,
        watch: bool,
        wait: bool,
        progress: Progress | None,
    ) -> dict[str, Any]: ...

    def collections(self) -> list[dict[str, Any]]: ...

    def jobs(self, limit: int) -> list[dict[str, Any]]: ...

    def retry_job(
        self, job_id: str, *, wait: bool, progress: Progress | None
    ) -> dict[str, Any]: ...

    def watches(self) -> list[dict[str, Any]]: ...

    def remove_watch(self, target: int | str) -> dict[str, Any]: ...


class DaemonCollections:
    """The running daemon's collections (its model is loaded already: nothing is loaded here)."""

    daemon = True

    def __init__(self, client: DaemonClient) -> None:
        self.client = client

    def follow(self, job_id: str, progress: Progress | None) -> dict[str, Any]:
        """Poll a job until it finishes (reporting progress); the finished job."""
        while True:
            job = self.client.job(job_id)
            if progress is not None:
                progress(job)
            if job["state"] in ("done", "failed"):
                return job
            time.sleep(FOLLOW_SECONDS)

    def search(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.client.search(body)

    def index(
        self,
        path: Path,
        collection: str,
        options: dict[str, Any],
        *,
        prune: bool,
        watch: bool,
        wait: bool,
        progress: Progress | None,
    ) -> dict[str, Any]:
        body = {**options, "path": str(path), "prune": prune, "watch": watch}
        out = self.client.index(collection, body)
        if out.get("job_id") and wait:
            out.update(self.follow(out["job_id"], progress))
        return out

    def collections(self) -> list[dict[str, Any]]:
        return self.client.collections()

    def jobs(self, limit: int) -> list[dict[str, Any]]:
        return self.client.jobs(limit=limit)

    def retry_job(self, job_id: str, *, wait: bool, progress: Progress | None) -> dict[str, Any]:
        out = self.client.retry_job(job_id)
        return self.follow(job_id, progress) if wait else out

    def watches(self) -> list[dict[str, Any]]:
        return self.client.watches()

    def remove_watch(self, target: int | str) -> dict[str, Any]:
        """By id, or every watch of a folder (named as given or resolved)."""
        if isinstance(target, int):
            return self.client.remove_watch(target)
        path = Path(target).expanduser().absolute().as_posix()
        resolved = Path(target).expanduser().resolve().as_posix()
        ids = [w["id"] for w in self.client.watches() if w["path"] in (path, resolved)]
        if not ids:
            raise LocalrankError(f"no watch matches {target!r}")
        return {"removed": [r for i in ids for r in self.client.remove_watch(i)["removed"]]}


def collections_for(args: argparse.Namespace, runtime: Runtime, settings: Settings) -> Collections:
    """The running daemon's collections when `daemon_for` finds one, else this process's."""
    client = daemon_for(args, runtime, settings)
    if client is not None:
        return DaemonCollections(client)
    from localrank.cli.local import LocalCollections  # the engine and the store: only now

    return LocalCollections(settings, runtime)
