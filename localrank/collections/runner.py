"""The job runner: claims unfinished ingest and reindex jobs and runs them through the Ingestor.

Jobs live in the store, so they survive restarts; a job a crashed process left running is taken
over once its owner is gone. While it runs a job, the runner renews its claim (the store's lease)
every third of the lease; if the store says the job is no longer its own (this daemon stalled
past its lease and another one took the job over), it stops working on it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from localrank.collections.ingest import TRANSIENT_CODES, Ingestor
from localrank.errors import LocalrankError, ModelMismatch, StoreError
from localrank.store.records import Job, new_job_owner

log = logging.getLogger(__name__)
MIN_RENEW_SECONDS = 0.5


class LeaseLost(Exception):
    """Another runner took over the job this one was running (its lease had run out)."""


class JobRunner:
    """Claims unfinished jobs (including ones a crashed process left running) and runs them.

    One runner per process; several processes may run one each (a CLI `index` next to the
    daemon, several daemons on one PostgreSQL store): a job is claimed by exactly one owner at a
    time.
    """

    def __init__(self, ingestor: Ingestor, *, poll_seconds: float = 2.0) -> None:
        self.ingestor = ingestor
        self.owner = new_job_owner()
        self.poll_seconds = poll_seconds
        self._wake = asyncio.Event()
        # Jobs that cannot run with the serving model, until the model changes.
        self._blocked: dict[str, str] = {}

    def notify(self) -> None:
        """A job was queued: look now rather than at the next poll."""
        self._wake.set()

    async def process(self, job: Job, on_progress: Callable[[Job], None] | None = None) -> Job:
        """Run a job this runner claimed to its end, renewing the claim meanwhile. LeaseLost
        when another runner took it over."""
        store = self.ingestor.store
        work = asyncio.ensure_future(self.ingestor.process_job(job, on_progress))
        every = max(MIN_RENEW_SECONDS, store.lease_seconds / 3)
        try:
            while True:
                done, _ = await asyncio.wait({work}, timeout=every)
                if done:
                    return work.result()
                try:
                    ours = await asyncio.to_thread(store.renew_job, job.id, self.owner)
                except StoreError:
                    continue  # the store is unreachable: the work itself will say so
                if not ours:
                    log.warning("job %s was taken over by another runner: leaving it", job.id)
                    raise LeaseLost(job.id)
        finally:
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await work

    async def run_once(self) -> Job | None:
        """Claim and run one job; None when there was nothing runnable."""
        store = self.ingestor.store
        try:
            fingerprint = self.ingestor.get_embedder().fingerprint
        except LocalrankError:
            return None  # the model is still loading
        self._blocked = {j: f for j, f in self._blocked.items() if f == fingerprint}
        job = await asyncio.to_thread(lambda: store.claim_job(self.owner, skip=list(self._blocked)))
        if job is None:
            return None
        try:
            return await self.process(job)
        except LeaseLost:
            return None
        except ModelMismatch:
            self._blocked[job.id] = fingerprint
            await asyncio.to_thread(store.requeue_job, job.id)
        except LocalrankError as exc:
            if exc.code == "store_unavailable":
                return None  # still ours: claimed again (or taken over) once the store is back
            if exc.code in TRANSIENT_CODES:
                await asyncio.to_thread(store.requeue_job, job.id)
                return None
            reason = exc.message
            await asyncio.to_thread(lambda: store.finish_job(job.id, error=reason))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # an unexpected bug must not kill the runner loop
            message = f"{type(exc).__name__}: {exc}"
            await asyncio.to_thread(lambda: store.finish_job(job.id, error=message))
        return None

    async def run_forever(self) -> None:
        """The runner loop: until cancelled, run jobs, then wait for a notify or a poll."""
        try:
            while True:
                try:
                    ran = await self.run_once()
                except StoreError as exc:  # the store is away: try again at the next poll
                    log.warning("job runner: %s", exc.message)
                    ran = None
                if ran is not None:
                    continue
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_seconds)
        finally:
            # Closing: the store may already be gone, and then there is nothing to release.
            with contextlib.suppress(Exception):
                await asyncio.shield(
                    asyncio.to_thread(self.ingestor.store.release_jobs, self.owner)
                )
