"""kill -9 in the middle of ingestion: every acknowledged document survives and is searchable
once the job resumes; the database passes integrity_check and vectors == chunks."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from fake_embedder import HashEmbedder

from localrank.collections import CollectionService, SearchRequest
from localrank.store import SQLiteStore
from localrank.store.sqlite.maintenance import counts, integrity_check

JOB_DOCS = 300

CHILD = r"""
import asyncio, sys
sys.path.insert(0, sys.argv[1])
from fake_embedder import HashEmbedder
from localrank.collections import CollectionService, DocumentIn, IngestSettings
from localrank.store import SQLiteStore

async def main():
    store = SQLiteStore(sys.argv[2])
    emb = HashEmbedder(delay=0.03)
    svc = CollectionService(store, lambda: emb, IngestSettings(job_batch_docs=5))
    await svc.create_collection("c")
    n = int(sys.argv[3])
    docs = [DocumentIn(f"j{i}", f"job document jobtok{i} body text") for i in range(n)]
    job = await svc.add_documents("c", docs, background=True)
    print("ACK-JOB", job["job_id"], flush=True)   # the 202 moment
    runner = asyncio.create_task(svc.runner.run_forever())
    svc.runner.notify()
    i = 0
    while True:
        doc = DocumentIn(f"s{i}", f"sync document synctok{i}")
        await svc.add_documents("c", [doc], background=False)
        print("ACK", f"s{i}", flush=True)         # the 200 moment
        i += 1

asyncio.run(main())
"""


def test_kill_9_mid_job_loses_no_acknowledged_document(tmp_path: Path) -> None:
    db_path = tmp_path / "crash.db"
    tests_dir = str(Path(__file__).parent)
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, tests_dir, str(db_path), str(JOB_DOCS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")))  # type: ignore[union-attr]
    reader.start()
    job_id = None
    deadline = time.monotonic() + 60
    observer: SQLiteStore | None = None
    try:
        while time.monotonic() < deadline:
            time.sleep(0.05)
            assert proc.poll() is None, proc.stderr.read()  # type: ignore[union-attr]
            if job_id is None:
                job_id = next((ln.split()[1] for ln in lines if ln.startswith("ACK-JOB")), None)
                continue
            observer = observer or SQLiteStore(db_path)  # a reader next to the writing process
            job = observer.get_job(job_id)
            acked_sync = sum(ln.startswith("ACK s") for ln in lines)
            if job.done >= 40 and acked_sync >= 5:
                break
        assert job_id is not None and time.monotonic() < deadline, "child made no progress"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        reader.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        if observer is not None:
            observer.close()
    assert proc.returncode == -signal.SIGKILL
    acked = [ln.split()[1] for ln in lines if ln.startswith("ACK s")]

    store = SQLiteStore(db_path)
    try:
        conn = store.db.reader()
        assert integrity_check(conn) == ["ok"]
        c = counts(conn)
        assert c["chunks"] == c["vectors"] == c["codes"] == c["fts_rows"]
        assert c["chunks_without_vector"] == c["chunks_without_code"] == 0
        job = store.get_job(job_id)
        assert job.state == "running" and 0 < job.done < JOB_DOCS  # killed mid-job

        emb = HashEmbedder()
        svc = CollectionService(store, lambda: emb)

        async def resume_and_check() -> None:
            final = await svc.runner.run_once()  # the dead owner's job is taken over
            assert final is not None and final.id == job_id
            assert (final.state, final.done, final.failed) == ("done", JOB_DOCS, 0)
            for doc_id in acked:
                tok = "synctok" + doc_id[1:]
                out = await svc.search(SearchRequest("c", tok, mode="keyword", top_k=1))
                assert out["results"][0]["document_id"] == doc_id
            for i in range(0, JOB_DOCS, 7):
                out = await svc.search(SearchRequest("c", f"jobtok{i}", mode="keyword", top_k=1))
                assert out["results"][0]["document_id"] == f"j{i}"
                text = f"job document jobtok{i} body text"
                out = await svc.search(SearchRequest("c", text, mode="vector", top_k=1))
                assert out["results"][0]["score"] > 0.999

        asyncio.run(resume_and_check())
        assert integrity_check(conn) == ["ok"]
        c = counts(conn)
        assert c["chunks"] == c["vectors"] == c["fts_rows"]
        assert c["documents"] >= JOB_DOCS + len(acked)
    finally:
        store.close()
