"""What the model loader is doing, for /health while the daemon is not ready yet.

The loading thread writes, the event loop reads a consistent snapshot (one lock). Phases:
resolving -> (downloading) -> loading -> warming up.
"""

from __future__ import annotations

import threading
import time
from typing import Any


class LoadProgress:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._phase = "starting"
        self._model = ""
        self._done = 0
        self._total = 0
        self._phase_started = time.monotonic()

    def phase(self, name: str, model: str | None = None) -> None:
        with self._lock:
            self._phase = name
            self._phase_started = time.monotonic()
            if model is not None:
                self._model = model

    def download(self, model: str, total: int) -> None:
        """A download of `total` bytes starts (0 when the hub did not say)."""
        with self._lock:
            self._phase, self._model = "downloading", model
            self._done, self._total = 0, total
            self._phase_started = time.monotonic()

    def bytes_done(self, done: int) -> None:
        with self._lock:
            self._done = min(done, self._total) if self._total else done

    @property
    def downloading(self) -> bool:
        return self._phase == "downloading"

    def snapshot(self) -> dict[str, Any]:
        """{"phase", "model", "seconds"} and, while downloading, "download": bytes and percent."""
        with self._lock:
            out: dict[str, Any] = {
                "phase": self._phase,
                "model": self._model,
                "seconds": round(time.monotonic() - self._phase_started, 1),
            }
            if self._phase == "downloading":
                out["download"] = {
                    "bytes_done": self._done,
                    "bytes_total": self._total,
                    "percent": round(100.0 * self._done / self._total, 1) if self._total else None,
                }
            return out
