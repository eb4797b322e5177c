"""The job runner: claims unfinished ingest and reindex jobs and runs them through the Ingestor.

Jobs are rows in the store (localrank.store.jobs), so they survive restarts; a job a crashed
process left running is taken over once its owner is gone.
"""

from __future__ import annotations

import asyncio
import contextlib

from localrank.errors import LocalrankError, ModelMismatch
from localrank.ingest import TRANSIENT_CODES, Ingestor
from localrank.store import jobs as jobs_db


class JobRunner:
    """Claims unfinished jobs (including ones a crashed process left running) and runs them.

    One runner per process; several processes may run one each (a CLI `index` next to the
    daemon): a job is claimed by exactly one owner at a time.
    """

    def __init__(self, ingestor: Ingestor, *, poll_seconds: float = 2.0) -> None:
        self.ingestor = ingestor
        self.owner = jobs_db.make_owner()
        self.poll_seconds = poll_seconds
        self._wake = asyncio.Event()
        # Jobs that cannot run with the serving model, until the model changes.
        self._blocked: dict[str, str] = {}

    def notify(self) -> None:
        """A job was queued: look now rather than at the next poll."""
        self._wake.set()

    async def run_once(self) -> jobs_db.Job | None:
        """Claim and run one job; None when there was nothing runnable."""
        db = self.ingestor.store.db
        try:
            fingerprint = self.ingestor.get_embedder().fingerprint
        except LocalrankError:
            return None  # the model is still loading
        self._blocked = {j: f for j, f in self._blocked.items() if f == fingerprint}
        job = await asyncio.to_thread(jobs_db.claim_job, db, self.owner, skip=list(self._blocked))
        if job is None:
            return None
        try:
            return await self.ingestor.process_job(job)
        except ModelMismatch:
            self._blocked[job.id] = fingerprint
            await asyncio.to_thread(self._requeue, job.id)
        except LocalrankError as exc:
            if exc.code in TRANSIENT_CODES:
                await asyncio.to_thread(self._requeue, job.id)
                return None
            await asyncio.to_thread(self._fail, job.id, exc.message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # an unexpected bug must not kill the runner loop
            await asyncio.to_thread(self._fail, job.id, f"{type(exc).__name__}: {exc}")
        return None

    def _requeue(self, job_id: str) -> None:
        with self.ingestor.store.db.write() as conn:
            conn.execute(
                "UPDATE jobs SET state = 'queued', owner = NULL WHERE id = ? AND state = 'running'",
                (job_id,),
            )

    def _fail(self, job_id: str, message: str) -> None:
        with self.ingestor.store.db.write() as conn:
            jobs_db.finish_job(conn, job_id, "failed", message)

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
                    asyncio.to_thread(jobs_db.release_jobs, self.ingestor.store.db, self.owner)
                )
