"""Settings -> a loaded, warmed Engine. The one place that wires resolution, recipe and backend."""

from __future__ import annotations

import logging

import numpy as np

from localrank.config import Settings
from localrank.engine.core import Engine
from localrank.engine.recipe import load_recipe
from localrank.engine.resolve import resolve_model
from localrank.engine.select import choose_backend, create_embedder, probe_machine
from localrank.engine.tokenizer import TextTokenizer, load_raw_tokenizer
from localrank.errors import BackendError

log = logging.getLogger(__name__)


def default_batch_tokens(device: str) -> int:
    """Tokens per forward pass. On CPU small batches stay in cache: 2k-token batches measured
    1.2x faster than 8k ones for MiniLM on mixed lengths (bench/engine_throughput.py); GPUs
    want large batches to fill their cores."""
    return 2048 if device == "cpu" else 16384


def load_engine(settings: Settings) -> Engine:
    """Resolve, load and warm the configured model on the best (or requested) backend."""
    probe = probe_machine()
    backend, device = choose_backend(settings.backend, probe)
    resolved = resolve_model(
        settings.model,
        allow_fallback=settings.model_is_default,
        prefer_mlx=backend == "mlx" and device == "gpu",
    )
    if resolved.fallback_reason:
        log.warning("FALLBACK MODEL: %s", resolved.fallback_reason)
    raw = load_raw_tokenizer(resolved.path)
    recipe = load_recipe(
        resolved.path,
        raw,
        max_tokens=settings.max_tokens,
        default_instruction=settings.default_instruction,
    )
    tokenizer = TextTokenizer(raw, recipe)
    embedder = create_embedder(backend, device, resolved.path, recipe, settings.dtype)
    budget = settings.max_batch_tokens or default_batch_tokens(device)
    engine = Engine(
        resolved,
        tokenizer,
        embedder,
        max_batch_tokens=budget,
        max_batch_size=settings.max_batch_size,
        served_names=settings.served_model_names,
    )
    # Warm-up doubles as a health check: a backend that yields NaN fails here, at startup.
    warm = engine.embed(["warm up", "a second, longer warm-up input of several tokens"])
    if not np.isfinite(warm.vectors).all():  # run() raises first; kept as a last guard
        raise BackendError("warm-up produced non-finite vectors")
    info = engine.info
    log.info(
        "model %s (%s) on %s/%s %s, dim %d, pooling %s, max tokens %d",
        info.model_id,
        info.revision,
        info.backend.backend,
        info.backend.device,
        info.backend.dtype,
        info.backend.dim,
        info.backend.pooling,
        info.backend.max_tokens,
    )
    log.info("model answers to: %s", ", ".join(info.names))
    return engine
