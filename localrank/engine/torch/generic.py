"""The generic path: an embedding architecture with no native forward (the manifest's
`families.native` lists those that have one), run through transformers' AutoModel on torch.

transformers is imported here only, when such a model is loaded, so the native paths keep their
cold start (its modeling modules cost seconds to import); it is the `generic` extra, and a
missing one is a BackendError that names it. The recipe rules are the same as for
the native families (pooling from modules.json, prompts, normalisation: engine/recipe.py), and
what was loaded is read back from the loaded model.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from localrank.engine.batching import checked_batch
from localrank.engine.machine import read_topology
from localrank.engine.torch.cpu import configure_threads
from localrank.engine.torch.embedder import _DTYPES, device_available, pool
from localrank.engine.torch.layers import claim_threads
from localrank.engine.types import BackendInfo, Batch, Pause, Recipe
from localrank.errors import BackendError, ModelError

log = logging.getLogger(__name__)


class GenericTorchEmbedder:
    def __init__(
        self,
        model_dir: Path,
        recipe: Recipe,
        *,
        device: str = "cpu",
        dtype: str = "auto",
        threads: int = 0,
    ) -> None:
        try:
            import transformers  # heavy: only for architectures without a native forward
        except ImportError as e:
            raise BackendError(
                f"{model_dir}: {recipe.family.removeprefix('generic:')} has no native forward and "
                "loads through transformers, which is not installed here: "
                "pip install 'localrank[generic]'"
            ) from e

        if not device_available(device):
            raise BackendError(f"torch device {device!r} is not available here")
        if device == "cpu":
            configure_threads(threads or read_topology().physical_cores())
        # float32 unless asked: no probe says the architecture keeps its norms in float32.
        name = "float32" if dtype == "auto" else dtype
        if name not in _DTYPES:
            raise BackendError(f"unknown dtype {dtype!r}")
        if name == "int8":
            raise BackendError(
                "dtype int8 needs a native forward (Qwen3, BERT); this architecture loads "
                "through transformers: use float32, float16 or bfloat16"
            )
        try:
            model = transformers.AutoModel.from_pretrained(str(model_dir), dtype=_DTYPES[name])
        except (OSError, ValueError, KeyError) as e:
            raise ModelError(f"{model_dir}: transformers cannot load it: {e}") from e
        self.model: torch.nn.Module | None = model.to(device).eval()
        self.device = torch.device(device)
        self.recipe = recipe
        hidden = int(model.config.hidden_size)
        if hidden != recipe.dim:
            raise ModelError(f"{model_dir}: hidden_size {hidden} != recipe dim {recipe.dim}")
        self._vocab = int(model.config.vocab_size)
        positions = getattr(model.config, "max_position_embeddings", None)
        self._positions = int(positions) if positions else None
        loaded = next(model.parameters()).dtype
        self.info = BackendInfo(
            backend="torch",
            device=self.device.type,
            dtype=str(loaded).removeprefix("torch."),
            dim=hidden,
            pooling=recipe.pooling,
            max_tokens=recipe.max_tokens,
            dtype_reason=(
                f"the generic path ({type(model).__name__} from transformers) runs in "
                + ("float32 unless a dtype is set" if dtype == "auto" else "the dtype set")
            ),
            threads=torch.get_num_threads() if device == "cpu" else 0,
        )
        log.info("torch (generic): loaded %s as %s", model_dir, type(model).__name__)

    def embed(self, batch: Batch, pause: Pause | None = None) -> np.ndarray:
        """Pooled float32 vectors; the model runs whole (`pause` has no layer to run at)."""
        model = self.model
        if model is None:
            raise BackendError("generic embedder is closed")
        ids_np, mask_np = checked_batch(batch, self._vocab, self._positions)
        if ids_np.shape[0] == 0:
            return np.zeros((0, self.info.dim), dtype=np.float32)
        ids = torch.from_numpy(np.ascontiguousarray(ids_np, dtype=np.int64)).to(self.device)
        mask = torch.from_numpy(np.ascontiguousarray(mask_np, dtype=np.int64)).to(self.device)
        claim_threads()
        with torch.inference_mode():
            hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
            return pool(hidden, mask.bool(), self.recipe.pooling).float().cpu().numpy()

    def close(self) -> None:
        self.model = None
