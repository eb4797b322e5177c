"""The generic path on MLX: an embedding architecture with no native forward (the manifest's
`families.native` lists those that have one), run through mlx-embeddings' model of it.

mlx-embeddings is imported here only, when such a model is loaded (it imports transformers and
mlx-vlm: seconds of cold start the native paths do not pay); it is the `mlx-generic` extra, and
a missing one is a BackendError that names it. Only its model classes are used, on the model
folder's own files (never the hub): the recipe (tokenizer, prompts, padding, pooling from
modules.json, normalisation) is the engine's, as for the native families, so the same folder
gives the same vectors on torch's generic path. Its models' own pooled outputs are ignored:
the last hidden states are pooled here from the attention mask. float32 unless a dtype is set;
int8 is for the native forwards only.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from localrank.engine.batching import checked_batch
from localrank.engine.mlx.embedder import DTYPES, dtype_name, finite, pick_device, pool
from localrank.engine.model_files import read_config
from localrank.engine.types import BackendInfo, Batch, Pause, Recipe
from localrank.errors import BackendError, ModelError

log = logging.getLogger(__name__)

EXTRA = "pip install 'localrank[mlx-generic]'"


def import_mlx_embeddings(model_dir: Path, architecture: str) -> Any:
    """mlx_embeddings.utils, or a BackendError naming the extra to install."""
    try:
        return importlib.import_module("mlx_embeddings.utils")
    except ImportError as e:
        raise BackendError(
            f"{model_dir}: {architecture} has no native forward; on MLX it loads through "
            f"mlx-embeddings, which is not installed here ({e}): {EXTRA}, or --backend torch"
        ) from e


class MLXGenericEmbedder:
    """An architecture mlx-embeddings implements, on MLX, following the Embedder protocol."""

    def __init__(
        self,
        model_dir: Path,
        recipe: Recipe,
        *,
        dtype: str = "auto",
        device: str = "auto",
    ) -> None:
        model_dir = Path(model_dir)
        architecture = recipe.family.removeprefix("generic:")
        utils = import_mlx_embeddings(model_dir, architecture)
        cfg, _ = read_config(model_dir)
        # mlx-embeddings' own lookup: a module per config.json model_type, "-" as "_".
        module = "mlx_embeddings.models." + str(cfg.get("model_type")).replace("-", "_")
        if importlib.util.find_spec(module) is None:
            raise BackendError(
                f"{model_dir}: {architecture} has no native forward, and mlx-embeddings has no "
                "model for it either; the generic path on torch serves it: --backend torch"
            )
        if dtype != "auto" and dtype not in DTYPES:
            raise BackendError(
                f"the generic path on MLX ({architecture} through mlx-embeddings) runs in "
                f"{', '.join(DTYPES)}, not {dtype!r}"
            )
        self._device, device_name = pick_device(device)
        compute = DTYPES["float32" if dtype == "auto" else dtype]
        with mx.stream(self._device):
            try:
                model: nn.Module = utils.load_model(model_dir)
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise ModelError(f"{model_dir}: mlx-embeddings cannot load it: {e}") from e
            # Floating parameters only: quantised weights (an mlx-community checkpoint) stay.
            model.set_dtype(compute)
            mx.eval(model.parameters())
        self._model: nn.Module | None = model
        self._recipe = recipe
        self._vocab = int(cfg["vocab_size"])
        positions = cfg.get("max_position_embeddings")
        self._positions = int(positions) if positions else None
        self.info = BackendInfo(
            backend="mlx",
            device=device_name,
            dtype=dtype_name(compute),
            dim=recipe.dim,
            pooling=recipe.pooling,
            max_tokens=recipe.max_tokens,
            dtype_reason=(
                f"the generic path ({type(model).__module__.rsplit('.', 1)[-1]} from "
                "mlx-embeddings) runs in "
                + ("float32 unless a dtype is set" if dtype == "auto" else "the dtype set")
            ),
        )
        log.info("mlx (generic): loaded %s (%s) through mlx-embeddings", model_dir, architecture)

    def embed(self, batch: Batch, pause: Pause | None = None) -> np.ndarray:
        """Pooled float32 vectors; the model runs whole (`pause` has no layer to run at)."""
        model = self._model
        if model is None:
            raise BackendError("generic MLX embedder is closed")
        ids_np, mask_np = checked_batch(batch, self._vocab, self._positions)
        if ids_np.shape[0] == 0:
            return np.zeros((0, self.info.dim), dtype=np.float32)
        real = mask_np != 0
        with mx.stream(self._device):
            ids = mx.array(ids_np.astype(np.int32))
            out = model(ids, attention_mask=mx.array(real.astype(np.float32)))
            hidden = out.last_hidden_state
            if hidden is None or hidden.ndim != 3:
                raise BackendError(
                    f"mlx-embeddings' {type(model).__module__} returns no token states "
                    "(already pooled): the recipe's pooling cannot be applied; --backend torch"
                )
            vectors = pool(hidden, real, self._recipe.pooling)
            del out, hidden
        if vectors.shape[1] != self.info.dim:
            raise BackendError(
                f"mlx-embeddings gave {vectors.shape[1]}-wide vectors, the recipe says "
                f"{self.info.dim}"
            )
        return finite(vectors, self.info.dtype)

    def close(self) -> None:
        self._model = None
        mx.clear_cache()
