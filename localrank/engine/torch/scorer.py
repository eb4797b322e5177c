"""TorchScorer: a cross-encoder on one torch device, scored as its authors score it.

- Qwen3-Reranker: the Qwen3 forward (qwen3.py), then only the two rows of the output projection
  that matter ("no" and "yes") at the last position (rows are left-padded): a 2 x hidden matmul
  instead of the 151k-row LM head. logit = yes - no.
- BERT / XLM-RoBERTa sequence classification: the encoder forward (bert.py, with segment ids
  and XLM-R's position offset), then the head transformers runs: BERT's pooler (tanh dense on
  [CLS]) and classifier; RoBERTa's classification head (dense, tanh, out_proj on <s>).

Weights are mapped from safetensors and checked against config.json's shapes, as the embedder
does (weights.py, families.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from localrank.engine.batching import checked_batch
from localrank.engine.machine import read_topology
from localrank.engine.model_files import normalise_keys, read_config, weight_files
from localrank.engine.precision import DtypeChoice
from localrank.engine.rerank import HEADS, PREFIXES, RerankRecipe
from localrank.engine.torch.bert import Bert, bert_shapes
from localrank.engine.torch.cpu import configure_threads
from localrank.engine.torch.embedder import _DTYPES, check_weights, device_available, pick_dtype
from localrank.engine.torch.families import FAMILIES
from localrank.engine.torch.layers import Layers
from localrank.engine.torch.qwen3 import Qwen3, qwen3_shapes
from localrank.engine.torch.weights import MappedCheckpoint, Placement
from localrank.engine.types import BackendInfo, Batch, Pause
from localrank.errors import BackendError, ModelError

log = logging.getLogger(__name__)


class TorchScorer:
    def __init__(
        self,
        model_dir: Path,
        recipe: RerankRecipe,
        *,
        device: str = "cpu",
        dtype: str = "auto",
        threads: int = 0,
        dtype_source: str = "the dtype setting",
    ) -> None:
        model_dir = Path(model_dir)
        if not device_available(device):
            raise BackendError(f"torch device {device!r} is not available here")
        self.recipe = recipe
        self.device = torch.device(device)
        self.explicit = device == "mps"
        if device == "cpu":
            configure_threads(threads or read_topology().physical_cores())
        cfg, config_path = read_config(model_dir)
        family = recipe.family
        checkpoint = MappedCheckpoint.open(weight_files(model_dir))
        tensors = checkpoint.tensors
        checkpoint.tensors = {}
        head: list[Tensor] = []
        if family == "qwen3-reranker":
            lm_head = tensors.pop("lm_head.weight", None)
            model_type, shapes = "qwen3", qwen3_shapes
        else:
            for key in HEADS[family]:
                if key not in tensors:
                    raise ModelError(f"{model_dir}: missing weight {key!r} of the classifier head")
                head.append(tensors.pop(key))
            model_type, shapes = "bert", bert_shapes
        weights, origin = normalise_keys(tensors, checkpoint.origin, PREFIXES[family])
        try:
            expected = shapes(cfg)
        except KeyError as e:
            raise ModelError(f"{config_path}: missing config key {e}") from e
        check_weights(weights, origin, expected, model_dir)
        choice = pick_dtype(dtype, device, model_type, FAMILIES[model_type], dtype_source)
        if choice.dtype == "int8":  # an embedding path: the rerankers have no calibration
            choice = DtypeChoice("float32", f"{choice.reason}; int8 is for embedding: float32")
        place = Placement(self.device, _DTYPES[choice.dtype], checkpoint)
        if family == "qwen3-reranker":
            if lm_head is None:
                if not cfg.get("tie_word_embeddings", False):
                    raise ModelError(f"{model_dir}: no lm_head.weight and embeddings are not tied")
                lm_head = weights["embed_tokens.weight"]
            assert recipe.yes_id is not None and recipe.no_id is not None
            # Only the rows for "no" and "yes": all the LM head this reranker reads.
            self.rows = lm_head[[recipe.no_id, recipe.yes_id]].to(self.device, place.dtype)
        else:
            # The head reads the float32 hidden states BERT's forward returns: float32 too.
            self.head = [place.put(t, torch.float32) for t in head]
        try:
            model = Qwen3 if family == "qwen3-reranker" else Bert
            self.model: Qwen3 | Bert | None = model(cfg, weights, config_path, place)
        except KeyError as e:
            raise ModelError(f"{config_path}: missing config key {e}") from e
        self._layers = self.model.layers = Layers(self.model.layers)
        self._checkpoint: MappedCheckpoint | None = checkpoint
        self._vocab = int(cfg["vocab_size"])
        self.info = BackendInfo(
            backend="torch",
            device=self.device.type,
            dtype=str(place.dtype).removeprefix("torch."),
            dim=1,
            pooling="last_token" if family == "qwen3-reranker" else "cls",
            max_tokens=recipe.max_tokens,
            dtype_reason=choice.reason,
            threads=torch.get_num_threads() if device == "cpu" else 0,
        )
        log.info(
            "torch: loaded reranker %s (%s) on %s as %s",
            model_dir,
            family,
            self.info.device,
            self.info.dtype,
        )

    def score(self, batch: Batch, pause: Pause | None = None) -> np.ndarray:
        model = self.model
        if model is None:
            raise BackendError("torch reranker is closed")
        ids_np, mask_np = checked_batch(batch, self._vocab, model.max_positions)
        if ids_np.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        layers = self._layers
        outer = layers.pause
        layers.pause = pause if outer is None else None
        try:
            with torch.inference_mode():
                logits = self._score(model, ids_np, mask_np != 0, batch.token_type_ids)
        finally:
            layers.pause = outer
        return logits

    def _score(
        self, model: Qwen3 | Bert, ids_np: np.ndarray, real: np.ndarray, types: np.ndarray | None
    ) -> np.ndarray:
        ids = torch.from_numpy(np.ascontiguousarray(ids_np, dtype=np.int64)).to(self.device)
        mask = None if bool(real.all()) else torch.from_numpy(real).to(self.device)
        f32 = torch.float32
        if isinstance(model, Qwen3):
            if not bool(real[:, -1].all()):
                raise BackendError("Qwen3-Reranker rows must be left-padded")
            hidden = model.forward(ids, mask, explicit=self.explicit)[:, -1]
            no_yes = F.linear(hidden.to(self.rows.dtype), self.rows).to(f32)
            return (no_yes[:, 1] - no_yes[:, 0]).cpu().numpy()
        t = None if types is None else torch.from_numpy(np.ascontiguousarray(types)).to(self.device)
        first = model.forward(ids, mask, explicit=self.explicit, types=t)[:, 0]
        w1, b1, w2, b2 = self.head
        x = torch.tanh(F.linear(first, w1, b1))
        return F.linear(x, w2, b2)[:, 0].to(f32).cpu().numpy()

    def close(self) -> None:
        # Every reference to the weights: the model, its layer list (kept for pauses), the maps.
        self.model = self._checkpoint = None
        self._layers = Layers([])
        self.rows = torch.empty(0)
        self.head = []
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        elif self.device.type == "mps":
            torch.mps.empty_cache()
