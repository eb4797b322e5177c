"""The engine as an AsyncEmbedder (localrank.ingest's protocol) for in-process CLI work.

The daemon has its own adapter over the scheduler; this one is for `localrank index/search`
when they run without a daemon. Model calls run in one worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from localrank.config import Settings
from localrank.engine.core import Engine
from localrank.engine.load import load_engine


class InProcessEmbedder:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.model_id = engine.info.model_id
        self.fingerprint = engine.info.fingerprint
        self.dim = engine.dim
        self.max_tokens = engine.recipe.max_tokens
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="localrank-model")

    async def embed(self, texts: Sequence[str], *, query: bool, instruction: str | None = None,
                    bulk: bool = False) -> np.ndarray:
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(
            self._thread, lambda: self.engine.embed(list(texts), query=query,
                                                    instruction=instruction))
        return result.vectors

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        return self.engine.tokenizer.offsets(text)

    def close(self) -> None:
        self._thread.shutdown(wait=True)
        self.engine.close()


def embedder_factory(settings: Settings) -> InProcessEmbedder:
    return InProcessEmbedder(load_engine(settings))
