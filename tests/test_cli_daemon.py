"""The CLI with and without a running daemon: the same commands give the same results; with a
daemon, `search` (and index, embed, rerank, collections, jobs, watch) go through it and load no
model in the CLI process (asserted three ways: the Runtime's embedder factory is never called,
the daemon's metrics count the requests, and a real `localrank search` process never imports
numpy, torch, aiohttp or the SQLite driver)."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemons import LiveDaemon, free_port, request, write_notes

from localrank.cli import build_parser, main
from localrank.cli.collections_access import Collections, DaemonCollections, collections_for
from localrank.cli.common import Runtime
from localrank.cli.local import LocalCollections
from localrank.collections.documents import DocumentIn
from localrank.collections.models import local_embedding_model
from localrank.config import Settings, load_settings
from localrank.store import SQLiteStore, steps
from localrank.store.sqlite import jobs


def no_model(settings: Settings) -> Any:
    raise AssertionError("the CLI loaded a model although a daemon is running")


THROUGH_DAEMON = Runtime(embedder_factory=no_model)
IN_PROCESS = Runtime(embedder_factory=local_embedding_model, find_daemon=lambda s: None)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, minilm: Path) -> Iterator[LiveDaemon]:
    home = tmp_path_factory.mktemp("cli-daemon") / "home"
    daemon = LiveDaemon(home, free_port(), minilm).start()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def env(live: LiveDaemon, monkeypatch: pytest.MonkeyPatch) -> LiveDaemon:
    for name in (
        "LOCALRANK_HOME",
        "LOCALRANK_PORT",
        "LOCALRANK_MODEL",
        "LOCALRANK_BACKEND",
        "LOCALRANK_DTYPE",
    ):
        monkeypatch.setenv(name, live.env[name])
    return live


def run(argv: list[str], runtime: Runtime, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv, runtime)
    captured = capsys.readouterr()
    return code, captured.out


def as_json(argv: list[str], runtime: Runtime, capsys: pytest.CaptureFixture[str]) -> Any:
    code, out = run([*argv, "--json"], runtime, capsys)
    assert code == 0, out
    return json.loads(out)


def without_timings(out: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in out.items() if k != "timings_ms"}


def test_the_same_results_with_and_without_the_daemon(
    env: LiveDaemon, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "notes"
    write_notes(folder)
    searches_before = env.metric("localrank_requests_total", route="/v1/search")

    indexed = as_json(["index", str(folder), "-c", "notes"], THROUGH_DAEMON, capsys)
    assert indexed["state"] == "done" and indexed["files"] == 4 and indexed["changed"] == 4
    again = as_json(["index", str(folder), "-c", "notes", "--local"], IN_PROCESS, capsys)
    assert again["unchanged"] == 4 and again["job_id"] is None

    for query, mode in (("how do I bake bread", "hybrid"), ("lava and magma", "vector")):
        argv = ["search", query, "-c", "notes", "--mode", mode]
        daemon_out = as_json(argv, THROUGH_DAEMON, capsys)
        local_out = as_json([*argv, "--local"], IN_PROCESS, capsys)
        a, b = without_timings(daemon_out), without_timings(local_out)
        assert [r["document_id"] for r in a["results"]] == [r["document_id"] for r in b["results"]]
        for ra, rb in zip(a.pop("results"), b.pop("results"), strict=True):
            assert abs(ra.pop("score") - rb.pop("score")) < 1e-4
            ra["ranks"].pop("vector_cosine"), rb["ranks"].pop("vector_cosine")
            assert ra == rb
        assert a == b
        top = daemon_out["results"][0]["citation"]
        expected = "bread.md" if "bread" in query else "volcano.md"
        assert top["source"] == (folder / expected).resolve().as_posix()
        assert (top["line_start"], top["line_end"]) == (1, 5 if "bread" in query else 4)
        # The human output too (scores aside, which print to 4 decimals).
        text_daemon = run(argv, THROUGH_DAEMON, capsys)[1]
        text_local = run([*argv, "--local"], IN_PROCESS, capsys)[1]
        strip = [line.rsplit("score", 1)[0] for line in text_daemon.splitlines()]
        assert strip == [line.rsplit("score", 1)[0] for line in text_local.splitlines()]
    assert env.metric("localrank_requests_total", route="/v1/search") >= searches_before + 4

    assert as_json(["collections"], THROUGH_DAEMON, capsys) == as_json(
        ["collections", "--local"], IN_PROCESS, capsys
    )
    assert as_json(["jobs"], THROUGH_DAEMON, capsys) == as_json(
        ["jobs", "--local"], IN_PROCESS, capsys
    )

    texts = ["a document about bread", "tides and the moon"]
    e_daemon = as_json(["embed", *texts], THROUGH_DAEMON, capsys)
    e_local = as_json(["embed", *texts, "--local"], IN_PROCESS, capsys)
    vectors_daemon, vectors_local = e_daemon.pop("embeddings"), e_local.pop("embeddings")
    assert e_daemon == e_local
    for va, vb in zip(vectors_daemon, vectors_local, strict=True):
        assert max(abs(x - y) for x, y in zip(va, vb, strict=True)) < 1e-5
    q_daemon = as_json(["embed", "bread?", "--query", "--dimensions", "64"], THROUGH_DAEMON, capsys)
    assert q_daemon["dim"] == 64 and len(q_daemon["embeddings"][0]) == 64

    docs = ["the moon pulls the sea", "sourdough starter", "magma chamber"]
    r_daemon = as_json(["rerank", "ocean tides", *docs], THROUGH_DAEMON, capsys)
    r_local = as_json(["rerank", "ocean tides", *docs, "--local"], IN_PROCESS, capsys)
    assert r_daemon["model"] == r_local["model"]
    assert [r["index"] for r in r_daemon["results"]] == [r["index"] for r in r_local["results"]]
    for ra, rb in zip(r_daemon["results"], r_local["results"], strict=True):
        assert abs(ra["score"] - rb["score"]) < 1e-5 and ra["document"] == rb["document"]


def test_errors_are_the_same_with_and_without_the_daemon(
    env: LiveDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    for runtime, extra in ((THROUGH_DAEMON, []), (IN_PROCESS, ["--local"])):
        code = main(["search", "anything", "-c", "no-such-collection", *extra], runtime)
        err = capsys.readouterr().err
        assert code == 4 and "collection 'no-such-collection' does not exist" in err
        code = main(["search", "x", "-c", "notes", "--filter", "[1]", *extra], runtime)
        assert code == 2 and "filter" in capsys.readouterr().err


def test_index_watch_through_the_cli(
    env: LiveDaemon, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "watched"
    folder.mkdir()
    (folder / "a.md").write_text("the first gecko note\n")
    out = as_json(["index", str(folder), "-c", "watched", "--watch"], THROUGH_DAEMON, capsys)
    assert out["watch"]["path"] == folder.resolve().as_posix()
    listed = as_json(["watch", "list"], THROUGH_DAEMON, capsys)["watches"]
    assert [w["path"] for w in listed] == [folder.resolve().as_posix()]
    assert listed == [w for w in as_json(["watch", "list"], THROUGH_DAEMON, capsys)["watches"]]
    # The registration is in the database: the in-process view lists the same watch.
    local = as_json(["watch", "list", "--local"], IN_PROCESS, capsys)["watches"]
    assert [w["id"] for w in local] == [w["id"] for w in listed]
    removed = as_json(["watch", "remove", str(folder)], THROUGH_DAEMON, capsys)
    assert [w["path"] for w in removed["removed"]] == [folder.resolve().as_posix()]
    assert as_json(["watch", "list"], THROUGH_DAEMON, capsys)["watches"] == []


def failed_job(daemon: LiveDaemon, collection: str, texts: list[str]) -> str:
    """A job that failed with a store outage, as the daemon's job runner leaves one: created and
    failed in one transaction, so the daemon never runs it before the test retries it."""
    store = SQLiteStore(daemon.home / "data" / "localrank.db")
    try:
        items = [
            (f"{collection}-{i}", DocumentIn(f"{collection}-{i}", t).to_payload())
            for i, t in enumerate(texts)
        ]
        with store.db.write() as conn:
            job = steps.create_job(jobs, conn, collection, "ingest", items, {}, len(items))
            steps.finish_job(jobs, conn, job.id, error="the store kept failing for 300 s")
        return job.id
    finally:
        store.close()


def test_a_failed_job_is_retried_with_and_without_the_daemon(
    env: LiveDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _ = request(f"{env.url}/v1/collections", {"name": "retried"})
    assert status == 201
    texts = ["the first note about kestrels", "a second one, about falcons"]
    for runtime, extra in ((THROUGH_DAEMON, []), (IN_PROCESS, ["--local"])):
        job_id = failed_job(env, "retried", texts)
        listed = as_json(["jobs", *extra], runtime, capsys)["jobs"]
        assert [j["state"] for j in listed if j["job_id"] == job_id] == ["failed"]
        out = as_json(["jobs", "retry", job_id, *extra], runtime, capsys)
        assert (out["job_id"], out["state"], out["done"], out["errors"]) == (job_id, "done", 2, [])
        code = main(["jobs", "retry", job_id, *extra], runtime)  # done: nothing to retry
        assert code == 5 and "only a failed job can be retried" in capsys.readouterr().err
    code = main(["jobs", "retry", "job_nope"], THROUGH_DAEMON)
    assert code == 4 and "job_nope" in capsys.readouterr().err
    found = as_json(["search", "falcons", "-c", "retried"], THROUGH_DAEMON, capsys)
    assert found["results"][0]["document_id"] == "retried-1"


def test_a_search_process_with_a_daemon_imports_no_model(env: LiveDaemon, tmp_path: Path) -> None:
    folder = tmp_path / "notes2"
    write_notes(folder)
    subprocess.run(
        [sys.executable, "-m", "localrank", "index", str(folder), "-c", "notes2"],
        env=env.env,
        check=True,
        capture_output=True,
    )
    embedded = env.metric("localrank_embedded_inputs_total")
    probe = (
        "import sys\n"
        "from localrank.cli import main\n"
        "code = main(['search', 'bread and flour', '-c', 'notes2', '--json'])\n"
        "heavy = ['numpy', 'torch', 'aiohttp', 'apsw', 'mlx', 'transformers', 'tokenizers']\n"
        "print(sorted(m for m in heavy if m in sys.modules), file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env.env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "[]"
    out = json.loads(done.stdout)
    assert out["results"][0]["citation"]["source"].endswith("notes2/bread.md")
    # The query was embedded by the daemon's model.
    assert env.metric("localrank_embedded_inputs_total") == embedded + 1


def test_without_a_daemon_the_cli_works_in_process(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    minilm: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("LOCALRANK_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LOCALRANK_PORT", str(free_port()))  # nothing listens there
    monkeypatch.setenv("LOCALRANK_MODEL", str(minilm))
    folder = tmp_path / "notes"
    write_notes(folder)
    calls = []

    def counted(settings: Settings) -> Any:
        calls.append(settings)
        return local_embedding_model(settings)

    runtime = Runtime(embedder_factory=counted)  # the real daemon lookup: finds none
    out = as_json(["index", str(folder), "-c", "notes"], runtime, capsys)
    assert out["state"] == "done" and out["changed"] == 4
    found = as_json(["search", "moon and oceans", "-c", "notes"], runtime, capsys)
    assert found["results"][0]["citation"]["source"].endswith("tides.md")
    assert len(calls) == 2  # the model was loaded here, once per command


def test_the_collections_are_picked_once_behind_one_protocol(
    env: LiveDaemon, tmp_path: Path
) -> None:
    """The commands ask one `Collections` protocol; the daemon's and the in-process
    implementation both provide all of it, and `collections_for` picks the daemon's when one
    answers, this process's with --local or when none does."""
    for impl in (DaemonCollections, LocalCollections):
        for name, member in inspect.getmembers(Collections, inspect.isfunction):
            if not name.startswith("_"):
                assert inspect.signature(getattr(impl, name)) == inspect.signature(member), (
                    impl,
                    name,
                )
        assert isinstance(impl.daemon, bool)
    settings = load_settings()
    args = build_parser().parse_args(["collections"])
    assert isinstance(collections_for(args, THROUGH_DAEMON, settings), DaemonCollections)
    assert isinstance(collections_for(args, IN_PROCESS, settings), LocalCollections)
    local = build_parser().parse_args(["collections", "--local"])
    assert isinstance(collections_for(local, THROUGH_DAEMON, settings), LocalCollections)
