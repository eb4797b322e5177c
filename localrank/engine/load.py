"""Settings -> a loaded, warmed Engine. The one place that wires resolution (and download),
recipe, backend and warm-up, reporting each phase to a LoadProgress for /health."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from functools import partial

from localrank.config import Settings
from localrank.engine.core import WARM_DOCUMENT, WARM_QUERY, Engine, calibration_texts
from localrank.engine.download import download_snapshot
from localrank.engine.names import canonical_reranker_name
from localrank.engine.precision import held_precision
from localrank.engine.progress import LoadProgress
from localrank.engine.recipe import load_recipe
from localrank.engine.rerank import CrossEncoder, load_pair_tokenizer, load_rerank_recipe
from localrank.engine.resolve import resolve_model
from localrank.engine.select import (
    choose_backend,
    create_embedder,
    create_scorer,
    probe_machine,
)
from localrank.engine.tokenizer import TextTokenizer, load_raw_tokenizer
from localrank.engine.types import vector_fingerprint
from localrank.errors import ModelError

log = logging.getLogger(__name__)

# GNU OpenMP's spin before a waiting worker sleeps (configure_runtimes): iterations of its
# spin loop, ~25 ns each on an AVX-512 Xeon.
OPENMP_SPIN_COUNT = 10_000


def default_batch_tokens(device: str) -> int:
    """Tokens per forward pass. On CPU small batches stay in cache: 2k-token batches measured
    1.2x faster than 8k ones for MiniLM on mixed lengths (bench/engine_throughput.py); GPUs
    want large batches to fill their cores."""
    return 2048 if device == "cpu" else 16384


def configure_runtimes() -> None:
    """Thread behaviour of the libraries under the engine, set before they first load (a value
    the user set is kept). Measured in bench/threads_bench.py:

    - torch's OpenMP workers spin for a moment after each parallel region, then sleep
      (GOMP_SPINCOUNT, GNU OpenMP: the Linux wheels' runtime; ~0.25 ms on this project's Xeon
      VMs). A forward is hundreds of short regions a few microseconds of Python apart: workers
      that slept at once (OMP_WAIT_POLICY=PASSIVE) paid a wake-up in each, and a pass of 16
      queries to the 0.6B shape took 460-475 ms instead of 320-350. Spinning without bound
      (GNU's default, ~20 ms) made a query 2-3x slower while another process kept a core busy;
      this bound costs such a query ~15% (130 -> 155 ms). Other OpenMP runtimes (LLVM's, on
      macOS) wait passively.
    - tokenizers encodes on the calling thread instead of a rayon pool of one thread per CPU,
      which would compete with torch's threads for the same cores; next to the model,
      tokenising is a small cost.
    """
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", str(OPENMP_SPIN_COUNT))
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def load_engine(
    settings: Settings,
    progress: LoadProgress | None = None,
    stored: Callable[[], Iterable[str]] | None = None,
) -> Engine:
    """Resolve (downloading if need be), load and warm the configured model on the best (or
    requested) backend. `stored`: the fingerprints collections are bound to; with dtype "auto",
    the precision this model's collections hold is kept (precision.held_precision)."""
    progress = progress or LoadProgress()
    configure_runtimes()
    progress.phase("resolving", settings.model)
    probe = probe_machine()
    backend, device = choose_backend(settings.backend, probe)
    resolved = resolve_model(
        settings.model,
        allow_fallback=settings.model_is_default,
        prefer_mlx=backend == "mlx" and device == "gpu",
        download=partial(download_snapshot, progress=progress),
    )
    if resolved.fallback_reason:
        log.warning("FALLBACK MODEL: %s", resolved.fallback_reason)
    progress.phase("loading", resolved.model_id)
    started = time.perf_counter()
    raw = load_raw_tokenizer(resolved.path)
    recipe = load_recipe(
        resolved.path,
        raw,
        max_tokens=settings.max_tokens,
        default_instruction=settings.default_instruction,
    )
    tokenizer = TextTokenizer(raw, recipe)
    held = None
    if stored is not None and settings.dtype == "auto":
        float_fingerprint = vector_fingerprint(
            resolved.model_id, resolved.revision, recipe, int8=False
        )
        held = held_precision(stored(), float_fingerprint)
    embedder = create_embedder(
        backend,
        device,
        resolved.path,
        recipe,
        settings.dtype,
        threads=settings.threads,
        dtype_source=settings.source_of("dtype"),
        weight_cache=settings.paths.cache / "weights",
        calibration=[e.ids for e in tokenizer.encode(calibration_texts(recipe))],
        held=held,
    )
    budget = settings.max_batch_tokens or default_batch_tokens(device)
    engine = Engine(
        resolved,
        tokenizer,
        embedder,
        max_batch_tokens=budget,
        max_batch_size=settings.max_batch_size,
        served_names=settings.served_model_names,
    )
    loaded = time.perf_counter()
    progress.phase("warming up", resolved.model_id)
    engine.warm_up()
    info = engine.info
    log.info(
        "model %s (%s) on %s/%s, dim %d, pooling %s, max tokens %d; loaded in %.2fs, "
        "warmed up in %.2fs",
        info.model_id,
        info.revision,
        info.backend.backend,
        info.backend.device,
        info.backend.dim,
        info.backend.pooling,
        info.backend.max_tokens,
        loaded - started,
        time.perf_counter() - loaded,
    )
    log.info("model answers to: %s", ", ".join(info.names))
    log.info("dtype %s: %s", info.backend.dtype, info.backend.dtype_reason)
    return engine


def load_reranker(settings: Settings) -> CrossEncoder:
    """Resolve (downloading if need be; never a fallback) and load the configured reranker on
    the embedding model's backend, and score one pair (kernels chosen, pages read in)."""
    if not settings.reranker:
        raise ModelError("no reranker is configured (--reranker MODEL)")
    configure_runtimes()
    backend, device = choose_backend(settings.backend, probe_machine())
    name = canonical_reranker_name(settings.reranker)
    resolved = resolve_model(name, allow_fallback=False, download=download_snapshot)
    started = time.perf_counter()
    tokenizer = load_pair_tokenizer(resolved.path)
    recipe = load_rerank_recipe(
        resolved.path,
        tokenizer,
        max_tokens=settings.max_tokens,
        default_instruction=settings.default_instruction,
    )
    scorer = create_scorer(
        backend, device, resolved.path, recipe, settings.dtype, threads=settings.threads
    )
    reranker = CrossEncoder(
        resolved,
        tokenizer,
        recipe,
        scorer,
        max_batch_tokens=settings.max_batch_tokens or default_batch_tokens(device),
        max_batch_size=settings.max_batch_size,
    )
    reranker.rerank(WARM_QUERY, [WARM_DOCUMENT])
    log.info(
        "reranker %s (%s) on %s/%s as %s; loaded in %.2fs",
        resolved.model_id,
        recipe.family,
        scorer.info.backend,
        scorer.info.device,
        scorer.info.dtype,
        time.perf_counter() - started,
    )
    return reranker
