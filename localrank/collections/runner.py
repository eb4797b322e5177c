"""The job runner: claims unfinished ingest and reindex jobs and runs them through the Ingestor.

Jobs live in the store, so they survive restarts; a job a crashed process left running is taken
over once its owner is gone. While it runs a job, the runner renews its claim (the store's lease)
every third of the lease; if the store says the job is no longer its own (this daemon stalled
past its lease and another one took the job over), it stops working on it at once.

A job whose store operations fail because the database is away (StoreUnavailable) stays claimed
and is tried again at each poll: an outage of seconds costs nothing. One that keeps failing for
longer than `failure_timeout_s` (the `job_failure_timeout_s` setting) ends `failed` with the
reason as soon as the store takes that write; `retry_job` queues it again, and it resumes where
it stopped. Until the store takes the write, the runner's own knowledge is what the job view
reports (`report`): the database says "running", this process knows better.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from localrank.collections.ingest import TRANSIENT_CODES, Ingestor
from localrank.errors import LocalrankError, ModelMismatch, NotFound, StoreError, StoreUnavailable
from localrank.store.records import Job, new_job_owner

log = logging.getLogger(__name__)
MIN_RENEW_SECONDS = 0.5
DEFAULT_FAILURE_TIMEOUT_S = 300.0


@dataclass
class Stall:
    """A job this runner holds whose store operations keep failing."""

    job: Job  # as last read from the store (claimed, or after its last committed batch)
    since: float  # the runner's clock at the first failure since the job last made progress
    reason: str  # the last failure
    error: str | None = None  # past the bound: what the job fails with, until the store has it


class LeaseLost(Exception):
    """Another runner took over the job this one was running (its lease had run out)."""


class JobRunner:
    """Claims unfinished jobs (including ones a crashed process left running) and runs them.

    One runner per process; several processes may run one each (a CLI `index` next to the
    daemon, several daemons on one PostgreSQL store): a job is claimed by exactly one owner at a
    time.
    """

    def __init__(
        self,
        ingestor: Ingestor,
        *,
        poll_seconds: float = 2.0,
        failure_timeout_s: float = DEFAULT_FAILURE_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ingestor = ingestor
        self.owner = new_job_owner()
        self.poll_seconds = poll_seconds
        self.failure_timeout_s = failure_timeout_s
        self.clock = clock
        self._wake = asyncio.Event()
        # Jobs that cannot run with the serving model, until the model changes.
        self._blocked: dict[str, str] = {}
        # Jobs whose store operations keep failing, by id.
        self._stalls: dict[str, Stall] = {}

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
        await self._fail_stalled()
        try:
            fingerprint = self.ingestor.get_embedder().fingerprint
        except LocalrankError:
            return None  # the model is still loading
        self._blocked = {j: f for j, f in self._blocked.items() if f == fingerprint}
        failed = [j for j, s in self._stalls.items() if s.error is not None]
        job = await asyncio.to_thread(
            lambda: store.claim_job(self.owner, skip=[*self._blocked, *failed])
        )
        if job is None:
            return None
        latest = [job]
        try:
            finished = await self.process(job, latest.append)
            self._stalls.pop(job.id, None)
            return finished
        except LeaseLost:
            self._stalls.pop(job.id, None)
            return None
        except ModelMismatch:
            self._stalls.pop(job.id, None)
            self._blocked[job.id] = fingerprint
            await asyncio.to_thread(lambda: store.release_jobs(self.owner, only=job.id))
        except LocalrankError as exc:
            if exc.code == "store_unavailable":
                # Still ours: claimed again at the next poll, until the bound says enough.
                self._stalled(latest[-1], exc.message, progressed=len(latest) > 1)
                return None
            self._stalls.pop(job.id, None)
            if exc.code in TRANSIENT_CODES:
                await asyncio.to_thread(lambda: store.release_jobs(self.owner, only=job.id))
                return None
            await self._finish_failed(job, exc.message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # an unexpected bug must not kill the runner loop
            self._stalls.pop(job.id, None)
            await self._finish_failed(job, f"{type(exc).__name__}: {exc}")
        return None

    async def _finish_failed(self, job: Job, reason: str) -> None:
        """Record a job's failure; a job deleted meanwhile (with its collection) is gone, and
        there is nothing left to record."""
        try:
            await asyncio.to_thread(lambda: self.ingestor.store.finish_job(job.id, error=reason))
        except NotFound:
            log.info("job %s ended (%s) after its collection was deleted", job.id, reason)

    def _stalled(self, job: Job, reason: str, *, progressed: bool) -> None:
        """Note a store failure of `job`; a job that stored a batch since its last failure
        starts counting again."""
        stall = self._stalls.get(job.id)
        if stall is None or progressed:
            if stall is None:
                log.warning(
                    "job %s: the store failed (%s); trying again, for up to %g s",
                    job.id,
                    reason,
                    self.failure_timeout_s,
                )
            self._stalls[job.id] = Stall(job, self.clock(), reason)
        else:
            stall.job, stall.reason = job, reason

    async def _fail_stalled(self) -> None:
        """Fail the jobs whose store operations have kept failing past the bound, each as soon
        as the store takes the write (until then, `report` says so for the store)."""
        store = self.ingestor.store
        now = self.clock()
        for job_id, stall in list(self._stalls.items()):
            if stall.error is None:
                if now - stall.since < self.failure_timeout_s:
                    continue
                stall.error = (
                    f"the store kept failing for {now - stall.since:.0f} s "
                    f"(job_failure_timeout_s is {self.failure_timeout_s:g}): {stall.reason}"
                )
                log.error("job %s failed: %s", job_id, stall.error)
            try:
                # Renewing first: a job another runner took over meanwhile is its business.
                if await asyncio.to_thread(store.renew_job, job_id, self.owner):
                    await asyncio.to_thread(partial(store.finish_job, job_id, error=stall.error))
            except StoreError:
                continue  # the store is still away: at the next poll
            self._stalls.pop(job_id, None)

    async def view(self, job_id: str) -> dict[str, Any]:
        """A job as the API shows it (`report`). When the store cannot be read, a job this
        runner holds is answered from its memory (`"stale": true`); any other, StoreUnavailable."""
        try:
            job = await asyncio.to_thread(self.ingestor.store.get_job, job_id)
        except StoreUnavailable:
            stall = self._stalls.get(job_id)
            if stall is None:
                raise
            return self.report(stall.job, stale=True)
        return self.report(job)

    async def retry(self, job_id: str) -> Job:
        """Queue a failed job again (`Store.retry_job`: NotFound, Conflict unless it failed). A
        job failed in this runner's view only (the store never took the write, it still says
        running) is handed back to the queue as it is."""
        store = self.ingestor.store
        stall = self._stalls.get(job_id)
        if stall is not None and stall.error is not None:
            await asyncio.to_thread(lambda: store.release_jobs(self.owner, only=job_id))
            self._stalls.pop(job_id, None)
            job = await asyncio.to_thread(store.get_job, job_id)
        else:
            job = await asyncio.to_thread(store.retry_job, job_id)
        self.notify()
        return job

    def report(self, job: Job, *, stale: bool = False) -> dict[str, Any]:
        """The job's API view, with what the store cannot say yet: that the job's store
        operations keep failing (`store_failure`), and past the bound that it has failed.
        `stale`: `job` is what this runner last read, the store could not be read now."""
        out = job.to_api()
        stall = self._stalls.get(job.id)
        if stall is None or job.finished:
            return out
        out["store_failure"] = {
            "reason": stall.reason,
            "failing_s": round(self.clock() - stall.since, 1),
            "fails_after_s": self.failure_timeout_s,
        }
        if stall.error is not None:
            out["state"] = "failed"
            out["errors"] = [*job.errors, {"id": None, "message": stall.error}]
        if stale:
            out["stale"] = True
        return out

    async def run_forever(self) -> None:
        """The runner loop: until cancelled, run jobs, then wait for a notify or a poll."""
        try:
            while True:
                try:
                    ran = await self.run_once()
                except StoreError as exc:  # the store is away: try again at the next poll
                    log.warning("job runner: %s", exc.message)
                    ran = None
                except asyncio.CancelledError:
                    raise
                except Exception:  # a bug must not stop every later job
                    log.exception("job runner")
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
