"""The job runner: claims unfinished ingest and reindex jobs and runs them through the Ingestor.

Jobs live in the store, so they survive restarts; a job a crashed process left running is taken
over once its owner is gone.
"""

from __future__ import annotations

import asyncio
import contextlib

from localrank.collections.ingest import TRANSIENT_CODES, Ingestor
from localrank.errors import LocalrankError, ModelMismatch
from localrank.store.records import Job, new_job_owner


class JobRunner:
    """Claims unfinished jobs (including ones a crashed process left running) and runs them.

    One runner per process; several processes may run one each (a CLI `index` next to the
    daemon): a job is claimed by exactly one owner at a time.
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
            return await self.ingestor.process_job(job)
        except ModelMismatch:
            self._blocked[job.id] = fingerprint
            await asyncio.to_thread(store.requeue_job, job.id)
        except LocalrankError as exc:
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
                ran = await self.run_once()
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
