"""The engine: text -> prompts -> token batches -> pooled, normalised vectors.

One Engine per loaded model. It is not thread-safe: the daemon calls it from one worker thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from localrank.engine.batching import pad, plan_batches
from localrank.engine.names import model_names
from localrank.engine.resolve import ResolvedModel
from localrank.engine.tokenizer import Encoded, TextTokenizer
from localrank.engine.types import (
    MIN_DIMENSIONS,
    BackgroundStopped,
    Embedder,
    Inputs,
    ModelInfo,
    Pause,
    Recipe,
)
from localrank.errors import BackendError, InvalidInput, TooLarge

# What the first real requests look like, so their shapes are warm: a short query with the
# default instruction, and a one-paragraph document. The first forward pays the one-time costs
# (mapped weights paged in, kernels chosen, buffers allocated).
WARM_QUERY = "how do I reset my password"
WARM_DOCUMENT = (
    "To reset a forgotten password, open the sign-in page and choose Forgot password. Enter the "
    "address the account was registered with; a link valid for one hour arrives by email. "
    "Follow it, pick a new password of at least twelve characters, and sign in again. If no "
    "message arrives, check the spam folder or ask an administrator to reset it for you."
)

# What an int8 backend calibrates on (which input channels stay float32) and checks its vectors
# against float32 with: prose, an instructed query, code, figures and markup. Fixed, so a model
# quantises the same way at every start.
CALIBRATION_TEXTS = (
    WARM_DOCUMENT,
    "The quick brown fox jumps over the lazy dog near the river bank at dawn.",
    "def add(a, b):\n    return a + b  # see https://example.com/docs?page=2",
    "Q3 revenue: $4.2M (+17% YoY); 1,999 units; 3.14159; 2024-05-01T12:00:00Z",
    "<h1>Release notes</h1><ul><li>Faster start</li><li>Fixed: crash on empty input</li></ul>",
)


def calibration_texts(recipe: Recipe) -> list[str]:
    """CALIBRATION_TEXTS and a short query formatted as the recipe instructs queries."""
    query = WARM_QUERY
    if recipe.query_template is not None and recipe.default_instruction:
        query = recipe.query_template.format(task=recipe.default_instruction, query=query)
    return [*CALIBRATION_TEXTS, query]


@dataclass(frozen=True)
class EmbedResult:
    vectors: np.ndarray  # float32 [N, dim]
    prompt_tokens: int  # tokens the model really saw (after truncation)
    truncated: int  # inputs that were cut to max_tokens


def check_inputs(inputs: Any, *, max_inputs: int | None = None, param: str = "input") -> bool:
    """Validate a list of texts or of token-id lists; True when they are token ids."""
    if isinstance(inputs, (str, bytes)) or not isinstance(inputs, Sequence):
        raise InvalidInput(f"{param} must be a list of strings", param=param)
    if len(inputs) == 0:
        raise InvalidInput(f"{param} must not be empty", param=param)
    if max_inputs is not None and len(inputs) > max_inputs:
        raise TooLarge(f"{param} has {len(inputs)} items; the limit is {max_inputs}", param=param)
    if all(isinstance(x, str) for x in inputs):
        for i, text in enumerate(inputs):
            if not text.isascii():
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:  # a lone surrogate from a JSON "\ud800" escape
                    raise InvalidInput(
                        f"{param}[{i}] is not valid Unicode (lone surrogate)", param=param
                    ) from None
        return False
    if all(
        isinstance(x, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in x)
        for x in inputs
    ):
        if any(len(x) == 0 for x in inputs):
            raise InvalidInput(f"{param} has an empty token list", param=param)
        return True
    bad = next(i for i, x in enumerate(inputs) if not isinstance(x, str))
    raise InvalidInput(
        f"{param}[{bad}] must be a string, not {type(inputs[bad]).__name__}", param=param
    )


def relevance(cosine: np.ndarray) -> np.ndarray:
    """A bi-encoder rerank score: cosine in [-1, 1] mapped linearly to [0, 1]."""
    return np.clip((cosine + 1.0) / 2.0, 0.0, 1.0)


def cosine_of(score: float) -> float:
    """The cosine behind a `relevance` score (TEI's `raw_scores`)."""
    return score * 2.0 - 1.0


def apply_dimensions(vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
    """Matryoshka truncation: keep the first `dimensions` and re-normalise."""
    native = vectors.shape[1]
    if dimensions is None or dimensions == native:
        return vectors
    if isinstance(dimensions, bool) or not isinstance(dimensions, int):
        raise InvalidInput("dimensions must be an integer", param="dimensions")
    low = min(MIN_DIMENSIONS, native)
    if not low <= dimensions <= native:
        raise InvalidInput(
            f"dimensions must be between {low} and {native}, not {dimensions}", param="dimensions"
        )
    cut = vectors[:, :dimensions]
    norms = np.linalg.norm(cut, axis=1, keepdims=True)
    return (cut / np.maximum(norms, 1e-12)).astype(np.float32)


class Engine:
    def __init__(
        self,
        resolved: ResolvedModel,
        tokenizer: TextTokenizer,
        embedder: Embedder,
        *,
        max_batch_tokens: int = 16384,
        max_batch_size: int = 128,
        served_names: Sequence[str] = (),
    ) -> None:
        self.tokenizer = tokenizer
        self.embedder = embedder
        self.recipe = tokenizer.recipe
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        # Few distinct shapes matter on MPS, CUDA and MLX (memory and kernels kept per shape);
        # on torch CPU exact padding is cheaper (measured: bench/engine_throughput.py).
        info = embedder.info
        self.bucket = not (info.backend == "torch" and info.device == "cpu")
        # Set by `optimize` once the query prefix is cached (0: every query runs in full).
        self.cached_prefix_tokens = 0
        self._warmed_in_background = False
        self.info = ModelInfo(
            model_id=resolved.model_id,
            path=resolved.path,
            revision=resolved.revision,
            recipe=self.recipe,
            backend=embedder.info,
            tokenizer_appends_eos=tokenizer.tokenizer_appends_eos,
            fallback_reason=resolved.fallback_reason,
            names=model_names(resolved.model_id, served_names),
        )

    @property
    def dim(self) -> int:
        return self.recipe.dim

    def format_query(self, text: str, instruction: str | None) -> str:
        """`Instruct: {task}\\nQuery:{query}` for Qwen3. An empty instruction means none."""
        template = self.recipe.query_template
        if template is None or instruction == "":
            return text
        task = instruction if instruction is not None else (self.recipe.default_instruction or "")
        return template.format(task=task, query=text)

    def query_prefix_ids(self) -> list[int]:
        """The token ids every query with the default instruction starts with, whatever the
        query: the template's text before the query, cut where a query's first characters could
        merge with its last tokens (BPE pre-tokenisation joins ":" with the letters after it)."""
        if self.recipe.query_template is None or not self.recipe.default_instruction:
            return []
        head = self.format_query("", None)
        probes = ["", "a", "A", " a", "1", "?", ":", "-", "(", "'s", "\n", "é", "日本", "🚀"]
        rows = [e.ids for e in self.tokenizer.encode([head + p for p in probes])]
        n = min(len(r) for r in rows)
        common = next((i for i in range(n) if len({r[i] for r in rows}) > 1), n)
        return rows[0][:common]

    def prepare(
        self,
        inputs: Inputs,
        *,
        query: bool = False,
        instruction: str | None = None,
        truncate: bool = True,
    ) -> list[Encoded]:
        """Tokenize inputs by the recipe. With truncate=False an over-long input is an error."""
        if check_inputs(inputs):
            encoded = self.tokenizer.encode_ids(cast(Sequence[Sequence[int]], inputs))
        else:
            texts = cast(Sequence[str], inputs)
            if query:
                texts = [self.format_query(t, instruction) for t in texts]
            encoded = self.tokenizer.encode(texts)
        if not truncate:
            for i, e in enumerate(encoded):
                if e.truncated:
                    limit = self.recipe.max_tokens
                    size = e.original_tokens or f"more than {limit}"
                    raise TooLarge(
                        f"input[{i}] has {size} tokens; the limit is {limit} and truncation is off",
                        param="input",
                    )
        return encoded

    def run(self, encoded: Sequence[Encoded], pause: Pause | None = None) -> np.ndarray:
        """Embed prepared inputs: sorted, token-budget batches; results in input order.
        `pause` is handed to the backend (called between layers where it can)."""
        out = np.empty((len(encoded), self.dim), dtype=np.float32)
        plan = plan_batches(
            [len(e.ids) for e in encoded],
            max_batch_tokens=self.max_batch_tokens,
            max_batch_size=self.max_batch_size,
            bucket=self.bucket,
        )
        for indices in plan:
            batch = pad(
                [encoded[i].ids for i in indices],
                pad_id=self.recipe.pad_token_id,
                side=self.recipe.padding_side,
                bucket=self.bucket,
            )
            vectors = np.asarray(self.embedder.embed(batch, pause), dtype=np.float32)
            if vectors.shape != (len(indices), self.dim):
                raise BackendError(
                    f"backend returned shape {vectors.shape}, expected {(len(indices), self.dim)}"
                )
            out[indices] = vectors
        bad = np.flatnonzero(~np.isfinite(out).all(axis=1))
        if bad.size:
            raise BackendError(
                f"the {self.info.backend.backend} backend produced non-finite "
                f"vectors for inputs {bad[:10].tolist()}"
            )
        if self.recipe.normalize:
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            out /= np.maximum(norms, 1e-12)
        return out

    def embed(
        self,
        inputs: Inputs,
        *,
        query: bool = False,
        instruction: str | None = None,
        dimensions: int | None = None,
        truncate: bool = True,
    ) -> EmbedResult:
        encoded = self.prepare(inputs, query=query, instruction=instruction, truncate=truncate)
        vectors = apply_dimensions(self.run(encoded), dimensions)
        return EmbedResult(
            vectors, sum(len(e.ids) for e in encoded), sum(e.truncated for e in encoded)
        )

    def rerank(
        self, query: str, documents: Sequence[str], *, instruction: str | None = None
    ) -> tuple[np.ndarray, int]:
        """Bi-encoder rerank: the instructed query's cosine to each document, mapped to [0, 1]."""
        q = self.prepare([query], query=True, instruction=instruction)
        d = self.prepare(documents)
        vectors = self.run([*q, *d])
        cosine = vectors[1:] @ vectors[0]
        tokens = sum(len(e.ids) for e in (*q, *d))
        return relevance(cosine), tokens

    @property
    def warms_in_background(self) -> bool:
        """Whether the backend can do work alongside the serving thread (`optimize`): torch can,
        waiting for gaps between forward passes; MLX cannot, so it warms everything at load."""
        return hasattr(self.embedder, "optimize")

    def warm_up(self) -> None:
        """Before serving: run the shapes the first requests will (kernels chosen, buffers
        allocated, pages of mapped weights read in). Doubles as a health check: a backend that
        yields NaN fails here. A backend that warms in the background runs one query here (each
        forward of the 0.6B model reads every weight once: ~0.2-0.4 s on a laptop CPU) and the
        rest in `optimize`, once the daemon serves."""
        warm = [self.embed([WARM_QUERY], query=True).vectors]
        if not self.warms_in_background:
            warm.append(self.embed([WARM_DOCUMENT]).vectors)
        if not all(np.isfinite(v).all() for v in warm):  # run() raises first; a last guard
            raise BackendError("warm-up produced non-finite vectors")

    def cache_query_prefix(self) -> int:
        """Have the backend compute once the keys and values of the tokens every query with the
        default instruction starts with, where it can (torch); the count cached."""
        cache_prefix = getattr(self.embedder, "cache_prefix", None)
        if cache_prefix is None or self.cached_prefix_tokens:
            return self.cached_prefix_tokens
        prefix = self.query_prefix_ids()
        if prefix and cache_prefix(prefix):
            self.cached_prefix_tokens = len(prefix)
        return self.cached_prefix_tokens

    def optimize(self) -> int:
        """Work that makes later calls faster but is not needed to serve: cache the default
        query instruction's keys and values (queries share their first ~20 tokens; torch: exact
        to float32 rounding), warm a document's shape, repack weights (the torch CPU backend's
        bfloat16). Safe to run in another thread while the engine
        serves: each step waits for a gap between forward passes. A daemon runs it once ready,
        one-shot commands never. Returns how many weights were repacked."""
        optimize = getattr(self.embedder, "optimize", None)
        if optimize is None:
            return 0
        try:
            return self._optimize(optimize)
        except BackgroundStopped:
            return 0

    def stop_optimizing(self) -> None:
        """Have a running `optimize` end at its next step (the daemon is closing)."""
        stop = getattr(self.embedder, "stop_background", None)
        if stop is not None:
            stop()

    def _optimize(self, optimize: Callable[[], int]) -> int:
        if not self._warmed_in_background:
            self._warmed_in_background = True
            self.cache_query_prefix()
            wait_idle = getattr(self.embedder, "wait_idle", None)
            if wait_idle is not None:
                wait_idle()
            self.embed([WARM_DOCUMENT])
        return int(optimize())

    def close(self) -> None:
        self.embedder.close()
