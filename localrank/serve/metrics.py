"""Prometheus text exposition without a dependency: counters, gauges and histograms."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Sequence

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768)
FILL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)

Labels = tuple[tuple[str, str], ...]


def _fmt_labels(labels: Labels, extra: tuple[tuple[str, str], ...] = ()) -> str:
    pairs = [*labels, *extra]
    if not pairs:
        return ""
    body = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
    return "{" + body + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Registry:
    """Thread-safe: the model thread records batches while the loop records requests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[Labels, float]] = defaultdict(lambda: defaultdict(float))
        self._hist: dict[str, dict[Labels, list[float]]] = defaultdict(dict)
        self._buckets: dict[str, Sequence[float]] = {}
        self._gauges: dict[str, Callable[[], float]] = {}
        self._help: dict[str, tuple[str, str]] = {}

    def counter(self, name: str, help_text: str) -> None:
        self._help[name] = ("counter", help_text)

    def histogram(self, name: str, help_text: str, buckets: Sequence[float]) -> None:
        self._help[name] = ("histogram", help_text)
        self._buckets[name] = buckets

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self._help[name] = ("gauge", help_text)
        self._gauges[name] = read

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._counters[name][key] += value

    def observe(self, name: str, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        buckets = self._buckets[name]
        with self._lock:
            series = self._hist[name].get(key)
            if series is None:
                series = self._hist[name][key] = [0.0] * (len(buckets) + 2)  # buckets, sum, count
            for i, bound in enumerate(buckets):
                if value <= bound:
                    series[i] += 1
            series[-2] += value
            series[-1] += 1

    def value(self, name: str, **labels: str) -> float:
        """A counter's current value (for tests and /info)."""
        with self._lock:
            return self._counters[name].get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            for name, (kind, help_text) in sorted(self._help.items()):
                lines.append(f"# HELP {name} {help_text}")
                lines.append(f"# TYPE {name} {kind}")
                if kind == "counter":
                    for labels, v in sorted(self._counters[name].items()):
                        lines.append(f"{name}{_fmt_labels(labels)} {v:g}")
                elif kind == "gauge":
                    lines.append(f"{name} {self._gauges[name]():g}")
                else:
                    buckets = self._buckets[name]
                    for labels, series in sorted(self._hist[name].items()):
                        for bound, count in zip(buckets, series, strict=False):
                            le = (("le", f"{bound:g}"),)
                            lines.append(f"{name}_bucket{_fmt_labels(labels, le)} {count:g}")
                        inf = (("le", "+Inf"),)
                        lines.append(f"{name}_bucket{_fmt_labels(labels, inf)} {series[-1]:g}")
                        lines.append(f"{name}_sum{_fmt_labels(labels)} {series[-2]:g}")
                        lines.append(f"{name}_count{_fmt_labels(labels)} {series[-1]:g}")
        return "\n".join(lines) + "\n"


def standard_registry() -> Registry:
    r = Registry()
    r.counter("localrank_requests_total", "HTTP requests by route and status")
    r.histogram("localrank_request_seconds", "HTTP request latency by route", LATENCY_BUCKETS)
    r.counter("localrank_errors_total", "Error responses by route and error code")
    r.histogram("localrank_batch_size", "Rows per forward pass", SIZE_BUCKETS)
    r.histogram("localrank_batch_tokens", "Tokens per forward pass", TOKEN_BUCKETS)
    r.histogram("localrank_batch_seconds", "Forward pass latency", LATENCY_BUCKETS)
    r.histogram(
        "localrank_batch_fill_rows", "Rows per forward pass over max_batch_size", FILL_BUCKETS
    )
    r.histogram(
        "localrank_batch_fill_tokens", "Tokens per forward pass over max_batch_tokens", FILL_BUCKETS
    )
    r.counter(
        "localrank_passes_in_pauses_total",
        "Forward passes run inside another pass's pause (short requests behind a long pass)",
    )
    r.histogram(
        "localrank_queue_wait_seconds",
        "Submission to a request's first item in a forward pass, by request class "
        "(short: a small share of a pass; long: more; bulk: ingestion)",
        LATENCY_BUCKETS,
    )
    r.counter("localrank_embedded_inputs_total", "Inputs embedded by the model")
    r.counter("localrank_tokens_total", "Tokens embedded by the model")
    r.counter("localrank_truncated_inputs_total", "Inputs cut to the model's max tokens")
    r.counter("localrank_cache_hits_total", "Embedding cache hits")
    r.counter("localrank_cache_misses_total", "Embedding cache misses")
    r.counter("localrank_reranked_pairs_total", "(query, document) pairs scored by the reranker")
    return r
