"""What the model-listing routes of several dialects show about the served model (OpenAI's
/v1/models, Ollama's /api/tags, /api/show and /api/ps): its size, age and a digest, read once
from the model folder."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

from localrank.engine.model_files import weight_summary
from localrank.engine.types import ModelInfo
from localrank.errors import ModelError


@dataclass(frozen=True)
class ModelFacts:
    parameters: int  # 0 when the weights could not be read
    size_bytes: int
    modified: datetime  # config.json's modification time: when this copy of the model was made
    digest: str  # sha256 of the fingerprint: changes exactly when the vectors would

    @property
    def created(self) -> int:
        """`modified` as the Unix time OpenAI's `created` field takes."""
        return int(self.modified.timestamp())

    @property
    def parameter_size(self) -> str:
        """Ollama's way of writing it: 22.71M, 595.78M, 4.02B."""
        if self.parameters >= 1_000_000_000:
            return f"{self.parameters / 1e9:.2f}B"
        return f"{self.parameters / 1e6:.2f}M"


@lru_cache(maxsize=4)
def _facts(path: Path, fingerprint: str) -> ModelFacts:
    try:
        parameters, size = weight_summary(path)
    except ModelError:
        parameters = size = 0
    try:
        mtime = (path / "config.json").stat().st_mtime
    except OSError:
        mtime = 0.0
    return ModelFacts(
        parameters,
        size,
        datetime.fromtimestamp(mtime, tz=timezone.utc),
        hashlib.sha256(fingerprint.encode()).hexdigest(),
    )


async def model_facts(info: ModelInfo) -> ModelFacts:
    """The facts of the served model (file reads off the event loop, once)."""
    return await asyncio.to_thread(_facts, info.path, info.fingerprint)
