"""llama.cpp's `llama-server` (the engine Ollama runs) as a peer of localrank, built offline.

Build. The `llama-cpp-python` sdist on PyPI vendors llama.cpp's source, with
`convert_hf_to_gguf.py` and `gguf-py`. `llama_server()` fetches it with
`pip download --no-deps --no-binary :all: llama-cpp-python==VERSION`, extracts it and builds only
the `llama-server` target with cmake: a native CPU build (`-march=native`, what a user compiling
llama.cpp on their machine gets, less AMX: see CMAKE_FLAGS), static, Release, no tests, examples,
web UI or HTTPS, so that nothing is downloaded at build time. 9-10 minutes on 2 busy cores, once.

Convert. `gguf()` converts a safetensors folder to GGUF (f32, q8_0, ...) with the vendored
converter, run by this interpreter with the sdist's gguf-py on PYTHONPATH (it imports torch,
numpy, transformers and sentencepiece, which the dev environment has). Cached per model content
(config, tokenizer, safetensors names/sizes/mtimes).

Cache, outside the repository: $LOCALRANK_BENCH_CACHE/llama.cpp/VERSION/, else
~/.cache/localrank-bench/llama.cpp/VERSION/:
    llama_cpp_python-VERSION.tar.gz, sdist/ (extracted), build/ (build/bin/llama-server,
    build.json: the flags it was built with), build.log, gguf/<folder>-<key>/<type>.gguf

Serve. `LlamaServer` runs `llama-server -m X.gguf --embedding --pooling last` on a free loopback
port (threads, context and batch flags in SERVER_FLAGS), times launch -> /health 200 (cold
start), embeds through /v1/embeddings, tokenizes through /tokenize, reads its RSS, stops it.
Texts go as they are: the converted tokenizer appends <|endoftext|> itself (add_eos_token), so
a text that already ends with it gets a second one (cosine ~0.996 to the recipe instead of
1.0000; the server logs check_double_bos_eos). Each text must fit in one physical batch (-ub):
pooled embeddings are not split across batches. llama.cpp's threads spin and meet at a barrier
after each graph op: when other work holds a core, -t 2 on 2 cores ran 3-5x slower than -t 1
here, where localrank's threads degrade gently, so compare thread counts on a quiet machine.

As a script: builds and converts if needed, then measures localrank (`localrank serve`, one row
per dtype) and llama-server on each GGUF type in one run, on the same texts: bulk texts/s (40
documents of 5-300 words, 8 per request, sequential), one-query p50 (25 instructed queries),
cold start (localrank's: a second start, its caches filled by the first, which is shown beside
it; llama.cpp's quantisation happened in the conversion), RSS, and the minimum cosine of
documents and queries to the float32 recipe (transformers, last-token pooling, L2 norm). Writes
bench/results/default/llama_peer.json.

    python -m bench.llama_peer                    # build (once), convert (once), measure
    python -m bench.llama_peer --build-only       # only the binary and the GGUF files

Where llama.cpp cannot be built or found (no cmake, no network for the sdist, a failed build),
it says so and measures localrank's rows alone. localrank's rows: float32, bfloat16 where the CPU
computes it natively, int8 where the dtype setting accepts it (a backend that refuses a dtype
gives a row that says so).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.kit.daemon import Daemon, free_port, health_status
from bench.kit.measure import pct, rss_mb, rss_parts_mb
from bench.kit.paths import BENCH_MODEL, RESULTS
from bench.kit.texts import mixed_texts
from localrank.config import DEFAULT_INSTRUCTION, DTYPES
from localrank.engine.machine import read_cpu_features, read_topology

VERSION = "0.3.36"  # llama-cpp-python; vendors llama.cpp (ggml 0.25.3) at this version
CMAKE_FLAGS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=ON",  # -march=native, as a user's own build
    "-DBUILD_SHARED_LIBS=OFF",  # one self-contained binary in the cache
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",  # the server lives under tools/
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_UI=OFF",  # the web UI needs npm,
    "-DLLAMA_USE_PREBUILT_UI=OFF",  # or a download at build time
    "-DLLAMA_OPENSSL=OFF",  # no HTTPS model downloads needed
    "-DGGML_CCACHE=OFF",
]
if platform.machine().lower() in ("x86_64", "amd64"):
    # -march=native minus AMX: this version's AMX kernels (q8_0 and other quantized types)
    # segfault in ggml_backend_amx_mul_mat on a Sapphire Rapids VM, at the warm-up decode.
    # AVX-512 stays on; an AVX2 user machine has no AMX anyway.
    _NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    CMAKE_FLAGS += [f"-DCMAKE_C_FLAGS={_NO_AMX}", f"-DCMAKE_CXX_FLAGS={_NO_AMX}"]
# Context 4096 tokens shared by the server's 4 slots (KV cache 448 MiB for this shape; without
# -c it is the trained 32768, 3.5 GiB). Pooled inputs are never split, so each text must fit in
# one physical batch: 512 (the default; the bench's texts are at most ~430 tokens). Raise -ub and
# -b together for longer texts; the compute buffer grows with it (1.2 GiB at 2048).
SERVER_FLAGS = ["-c", "4096", "-b", "512", "-ub", "512"]
OUT = RESULTS / "default" / "llama_peer.json"


def cache_dir(environ: dict[str, str] | None = None) -> Path:
    """Where this VERSION's sdist, build and GGUF files live (outside the repository)."""
    env = os.environ if environ is None else environ
    base = env.get("LOCALRANK_BENCH_CACHE") or str(Path.home() / ".cache" / "localrank-bench")
    return Path(base) / "llama.cpp" / VERSION


def _run(cmd: list[str], log: Path, **kw: Any) -> None:
    with open(log, "ab") as f:
        f.write(f"\n$ {' '.join(cmd)}\n".encode())
        f.flush()
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, **kw).returncode
    if code != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{cmd[0]} exited with {code} (log {log}):\n{tail}")


def source_dir(cache: Path) -> Path:
    """The vendored llama.cpp tree of the sdist, fetched and extracted once."""
    src = cache / "sdist" / "vendor" / "llama.cpp"
    if (src / "CMakeLists.txt").exists():
        return src
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / f"llama_cpp_python-{VERSION}.tar.gz"
    if not archive.exists():
        print(f"llama.cpp: fetching the llama-cpp-python {VERSION} sdist", flush=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        _run(cmd + [f"llama-cpp-python=={VERSION}", "-d", str(cache)], cache / "build.log")
    tmp = Path(tempfile.mkdtemp(dir=cache))
    with tarfile.open(archive) as tar:
        tar.extractall(tmp, filter="data")
    shutil.rmtree(cache / "sdist", ignore_errors=True)
    (tmp / f"llama_cpp_python-{VERSION}").rename(cache / "sdist")
    tmp.rmdir()
    return src


def llama_server(cache: Path | None = None, jobs: int | None = None) -> Path:
    """The llama-server binary, built once per VERSION and CMAKE_FLAGS."""
    cache = cache or cache_dir()
    binary = cache / "build" / "bin" / "llama-server"
    stamp = cache / "build" / "build.json"
    if binary.exists() and stamp.exists() and json.loads(stamp.read_text()) == CMAKE_FLAGS:
        return binary
    src = source_dir(cache)
    log = cache / "build.log"
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    t0 = time.perf_counter()
    print(f"llama.cpp: building llama-server (log {log}; ~15 min on 2 cores)", flush=True)
    _run(["cmake", "-S", str(src), "-B", str(cache / "build"), *gen, *CMAKE_FLAGS], log)
    build = ["cmake", "--build", str(cache / "build"), "--target", "llama-server"]
    _run(build + ["-j", str(jobs or os.cpu_count() or 2)], log)
    stamp.write_text(json.dumps(CMAKE_FLAGS))
    print(f"llama.cpp: built in {time.perf_counter() - t0:.0f} s", flush=True)
    return binary


def model_key(model: Path) -> str:
    """A short digest of a model folder's content: small files hashed, safetensors by stat."""
    h = hashlib.sha256()
    for p in sorted(model.iterdir()):
        if p.name.endswith((".json", ".txt")) and p.is_file():
            h.update(p.name.encode() + p.read_bytes())
        elif p.suffix == ".safetensors":
            st = p.stat()
            h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def gguf(model: Path, outtype: str, cache: Path | None = None) -> Path:
    """`model` converted to GGUF `outtype` (f32, f16, bf16, q8_0) by the vendored converter."""
    cache = cache or cache_dir()
    out = cache / "gguf" / f"{model.name}-{model_key(model)}" / f"{outtype}.gguf"
    if out.exists():
        return out
    src = source_dir(cache)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".part")
    print(f"llama.cpp: converting {model.name} to {outtype}", flush=True)
    env = {**os.environ, "PYTHONPATH": str(src / "gguf-py")}
    cmd = [sys.executable, str(src / "convert_hf_to_gguf.py"), str(model)]
    _run(cmd + ["--outtype", outtype, "--outfile", str(tmp)], out.parent / "convert.log", env=env)
    tmp.rename(out)
    return out


def _post(port: int, path: str, body: dict[str, Any], timeout: float = 600.0) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"POST {path}: HTTP {resp.status}: {raw[:500]!r}")
        return json.loads(raw)
    finally:
        conn.close()


def _vectors(payload: dict[str, Any]) -> np.ndarray:
    rows = sorted(payload["data"], key=lambda d: d["index"])
    v = np.asarray([d["embedding"] for d in rows], dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


class LlamaServer:
    """`llama-server --embedding --pooling last` on one GGUF file, on a free loopback port."""

    def __init__(self, binary: Path, model: Path, threads: int, flags: list[str] | None = None):
        self.binary, self.model, self.threads = binary, model, threads
        self.flags = SERVER_FLAGS if flags is None else flags
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = model.with_suffix(".server.log")
        self.cold_start_s = float("nan")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 300.0) -> float:
        """Launch and block until /health answers 200; returns launch -> healthy seconds."""
        self.port = free_port()
        cmd = [str(self.binary), "-m", str(self.model), "--embedding", "--pooling", "last"]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["-t", str(self.threads), "-tb", str(self.threads), *self.flags]
        with open(self.log, "wb") as log:
            t0 = time.perf_counter()
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"llama-server exited with {self.proc.returncode}:\n{tail}")
            if health_status(self.port) == 200:
                self.cold_start_s = time.perf_counter() - t0
                return self.cold_start_s
            time.sleep(0.02)
        self.stop()
        raise TimeoutError(f"llama-server not healthy within {timeout:.0f} s (log {self.log})")

    def embed(self, texts: list[str]) -> np.ndarray:
        """L2-normalised vectors of `texts`, sent as they are (the server appends the EOT)."""
        return _vectors(_post(self.port, "/v1/embeddings", {"input": texts}))

    def tokenize(self, text: str) -> list[int]:
        """Token ids as the embedding path sees them (special tokens added)."""
        body = {"content": text, "add_special": True}
        return [int(t) for t in _post(self.port, "/tokenize", body)["tokens"]]

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass(frozen=True)
class Peer:
    """A server being measured: how to start, embed documents, embed one query, and stop."""

    name: str
    start: Callable[[], float]  # -> cold start seconds
    docs: Callable[[list[str]], np.ndarray]
    query: Callable[[str], np.ndarray]  # the bare query; the peer applies the instruction
    pid: Callable[[], int]
    stop: Callable[[], object]
    first_start: Callable[[], float | None] = lambda: None  # a start that fills caches first


def instructed(q: str) -> str:
    return f"Instruct: {DEFAULT_INSTRUCTION}\nQuery:{q}"


def llama_peer(name: str, server: LlamaServer) -> Peer:
    return Peer(
        name,
        server.start,
        server.embed,
        lambda q: server.embed([instructed(q)]),
        lambda: server.pid,
        server.stop,
    )


def localrank_peer(model: Path, dtype: str, threads: int) -> Peer:
    """`localrank serve` through its OpenAI-compatible route; queries with input_type query.
    Its cold start is a second start's, with the cache folder the first one filled (int8's
    calibration, cast weights), as a user's daemon starts at every login after the first;
    llama.cpp's quantisation happened once, in its conversion. The first start is reported
    beside it."""
    home = Path(tempfile.mkdtemp(prefix="localrank-peer-"))
    daemon = Daemon(str(model), extra=["--dtype", dtype, "--threads", str(threads)], home=home)
    first: list[float] = []

    def start() -> float:
        first.append(daemon.start())
        settle(daemon.pid)  # its background work (caches written) done, as before a restart
        daemon.stop()
        return daemon.start()

    def stop() -> None:
        daemon.stop()
        shutil.rmtree(home, ignore_errors=True)

    def post(body: dict[str, Any]) -> np.ndarray:
        return _vectors(_post(daemon.port, "/v1/embeddings", body))

    return Peer(
        f"localrank ({dtype})",
        start,
        lambda texts: post({"input": texts}),
        lambda q: post({"input": [q], "input_type": "query"}),
        lambda: daemon.pid,
        stop,
        lambda: first[0] if first else None,
    )


def reference(model: Path, texts: list[str]) -> np.ndarray:
    """The float32 recipe: transformers, left padding, last token (the appended EOT), L2 norm."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model), padding_side="left")
    net = AutoModel.from_pretrained(str(model), dtype=torch.float32).eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), 8):
            batch = tok(texts[i : i + 8], padding=True, return_tensors="pt")
            hidden = net(**batch).last_hidden_state
            out.append(F.normalize(hidden[:, -1], p=2, dim=1).numpy())
    return np.concatenate(out)


def check_tokens(server: LlamaServer, model: Path, texts: list[str]) -> int:
    """Texts whose llama.cpp tokens differ from the folder's tokenizer (which appends one EOT)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model / "tokenizer.json"))
    bad = 0
    for t in texts:
        ours, theirs = tok.encode(t).ids, server.tokenize(t)
        if ours != theirs:
            bad += 1
            print(f"  tokens differ ({len(ours)} vs {len(theirs)}): {theirs[-3:]}", flush=True)
    return bad


def settle(pid: int, limit: float = 120.0) -> float:
    """Wait until the server's own background work is done (localrank repacks weights, caches
    cast ones and trims its heap once serving; llama.cpp has none): its CPU time advances by
    less than 5% of a core over a second. Bulk and queries are measured after that, as a user's
    would be minutes after the start (the cold start is its own figure). Returns the seconds
    waited."""
    tick = os.sysconf("SC_CLK_TCK")

    def cpu() -> float:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick  # utime + stime

    started = time.perf_counter()
    before = cpu()
    while time.perf_counter() - started < limit:
        time.sleep(1.0)
        now = cpu()
        if now - before < 0.05:
            break
        before = now
    return time.perf_counter() - started


def measure(
    peer: Peer, docs: list[str], queries: list[str], per_request: int, ref: dict[str, np.ndarray]
) -> dict[str, Any]:
    """One peer, started cold and then settled: bulk documents, then one query at a time; RSS;
    cosines."""
    cold = peer.start()
    try:
        peer.docs(["warm-up"])
        settled = settle(peer.pid())
        t0 = time.perf_counter()
        dv = np.concatenate(
            [peer.docs(docs[i : i + per_request]) for i in range(0, len(docs), per_request)]
        )
        bulk_s = time.perf_counter() - t0
        lat, qv = [], []
        for q in queries:
            t = time.perf_counter()
            qv.append(peer.query(q))
            lat.append(time.perf_counter() - t)
        rss, peak = rss_mb(peer.pid())
        anon, file = rss_parts_mb(peer.pid())
    finally:
        peer.stop()
    dcos = (dv * ref["docs"]).sum(axis=1)
    qcos = (np.concatenate(qv) * ref["queries"]).sum(axis=1)
    return {
        "server": peer.name,
        "bulk_texts_per_s": round(len(docs) / bulk_s, 3),
        "query_p50_ms": round(pct(lat, 50) * 1000, 1),
        "query_p95_ms": round(pct(lat, 95) * 1000, 1),
        "cold_start_s": round(cold, 2),
        "first_start_s": None if (first := peer.first_start()) is None else round(first, 2),
        "rss_mib": round(rss),
        "peak_rss_mib": round(peak),
        "rss_anon_mib": round(anon),
        "rss_file_mib": round(file),
        "settled_s": round(settled, 1),
        "min_cosine_docs": round(float(dcos.min()), 5),
        "min_cosine_queries": round(float(qcos.min()), 5),
    }


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table; a server that could not be measured says why."""
    lines = [
        "| server | bulk texts/s | one query p50 | cold start | RSS (peak) "
        "| min cosine docs / queries |",
        "|" + " --- |" * 6,
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['server']} | not measured: {r['error']} | | | | |")
            continue
        lines.append(
            f"| {r['server']} | {r['bulk_texts_per_s']:.2f} | {r['query_p50_ms']:.0f} ms "
            f"| {r['cold_start_s']:.1f} s{first_start(r)} | {r['rss_mib'] / 1024:.2f} GB "
            f"({r['peak_rss_mib'] / 1024:.2f}) "
            f"| {r['min_cosine_docs']:.5f} / {r['min_cosine_queries']:.5f} |"
        )
    return "\n".join(lines)


def first_start(row: dict[str, Any]) -> str:
    first = row.get("first_start_s")
    return "" if first is None else f" (first {first:.1f} s)"


def failure(e: Exception) -> str:
    """Why a server could not be measured: the last ERROR line of its log tail (without the
    timestamp and logger), else the exception's last line."""
    lines = [x for x in str(e).splitlines() if x.strip()] or [type(e).__name__]
    errors = [x for x in lines if " ERROR " in x] or lines
    return errors[-1].split("[-] ", 1)[-1].strip()


def localrank_dtypes(requested: str) -> list[str]:
    """The localrank rows: "auto" is float32, bfloat16 where this CPU computes it natively, and
    int8 where the engine's dtype setting accepts it; else the comma-separated list given."""
    if requested == "none":
        return []
    if requested != "auto":
        return requested.split(",")
    out = ["float32"]
    if read_cpu_features().native_bf16() is not None:
        out.append("bfloat16")
    if "int8" in DTYPES:
        out.append("int8")
    return out


def llama_files(model: Path, types: list[str]) -> tuple[Path, dict[str, Path]] | str:
    """The llama-server binary and the GGUF file of each type (built and converted once), or
    why they cannot be had here (no cmake, no network for the sdist, a failed build)."""
    try:
        binary = llama_server()
        return binary, {t: gguf(model, t) for t in types}
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else e}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default=str(BENCH_MODEL), help="safetensors folder (0.6B shape)")
    ap.add_argument("--types", default="f32,q8_0", help="GGUF types to serve (default f32,q8_0)")
    ap.add_argument(
        "--threads",
        type=int,
        default=read_topology().physical_cores(),
        help="compute threads of every server (default: physical cores)",
    )
    ap.add_argument("--docs", type=int, default=40)
    ap.add_argument("--queries", type=int, default=25)
    ap.add_argument("--per-request", type=int, default=8)
    ap.add_argument(
        "--localrank-dtypes",
        default="auto",
        help="comma-separated dtypes for localrank's rows; 'auto': float32, bfloat16 where "
        "native, int8 where the engine accepts it; 'none' to leave localrank out",
    )
    ap.add_argument("--build-only", action="store_true", help="build and convert, measure nothing")
    ap.add_argument("--out", default=str(OUT), help="JSON to write")
    args = ap.parse_args(argv)
    model = Path(args.model)
    found = llama_files(model, args.types.split(","))
    if isinstance(found, str):
        print(f"llama.cpp: not available here ({found}); measuring localrank only", flush=True)
        if args.build_only:
            return 1
    elif args.build_only:
        print(found[0], *found[1].values(), sep="\n")
        return 0
    docs = mixed_texts(args.docs)
    queries = mixed_texts(args.queries, min_words=5, max_words=16, seed=8)
    t0 = time.perf_counter()
    ref = {
        "docs": reference(model, docs),
        "queries": reference(model, [instructed(q) for q in queries]),
    }
    print(f"float32 recipe: {time.perf_counter() - t0:.0f} s", flush=True)
    peers = [
        localrank_peer(model, d, args.threads) for d in localrank_dtypes(args.localrank_dtypes)
    ]
    bad: int | None = None
    if not isinstance(found, str):
        binary, files = found
        servers = {t: LlamaServer(binary, f, args.threads) for t, f in files.items()}
        peers += [llama_peer(f"llama.cpp {t}", s) for t, s in servers.items()]
        # The tokenization check first: the same ids as the folder's tokenizer, one EOT last.
        server = next(iter(servers.values()))
        server.start()
        try:
            bad = check_tokens(server, model, docs[:5] + [instructed(q) for q in queries[:5]])
        finally:
            server.stop()
        print(f"tokenization: {bad} of 10 texts differ from the folder's tokenizer", flush=True)
    rows = []
    for peer in peers:
        print(f"{peer.name} ...", flush=True)
        try:
            row = measure(peer, docs, queries, args.per_request, ref)
        except (OSError, RuntimeError) as e:  # a dtype the backend refuses, a crashed server
            row = {"server": peer.name, "error": failure(e)}
        print("  " + json.dumps(row), flush=True)
        rows.append(row)
    print(table(rows))
    if isinstance(found, str):
        print(f"(llama.cpp rows missing: {found})")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {
        "llama_cpp_python": VERSION,
        "llama_cpp": found if isinstance(found, str) else "built",
        "cmake": CMAKE_FLAGS,
        "server_flags": SERVER_FLAGS,
    }
    meta |= {"threads": args.threads, "token_mismatches": bad, "docs": len(docs)}
    meta |= {"queries": len(queries), "per_request": args.per_request}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
