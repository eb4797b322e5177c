"""TorchEmbedder: load a checkpoint onto one torch device, run its family's forward, pool.

Weights are read with safetensors, checked against the shapes config.json implies, cast once to
the compute dtype and moved to the device; the forwards live in qwen3.py and bert.py.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from localrank.engine.batching import checked_batch
from localrank.engine.model_files import (
    check_keys,
    hidden_size_of,
    model_type_of,
    normalise_keys,
    read_config,
    weight_files,
)
from localrank.engine.torch.families import FAMILIES
from localrank.engine.torch.layers import Layers, TorchModel
from localrank.engine.types import POOLINGS, BackendInfo, Batch, Pause, Recipe
from localrank.errors import BackendError, ModelError

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
ATTENTION = ("auto", "sdpa", "explicit")


def default_dtype(device: str) -> str:
    # Half precision on accelerators halves memory and is what the authors ship; on CPU float32
    # is both faster (no native half matmuls on most CPUs) and exact.
    return "float32" if device == "cpu" else "float16"


class TorchEmbedder:
    """A Qwen3 or BERT model on one torch device, pooled by the recipe.

    `attention`: "sdpa" (torch's fused kernel), "explicit" (matmul + float32 softmax) or "auto":
    explicit on MPS, where SDPA gives NaN for Qwen3 on some macOS versions, SDPA elsewhere.
    """

    def __init__(
        self,
        model_dir: Path,
        recipe: Recipe,
        *,
        device: str = "cpu",
        dtype: str = "auto",
        attention: str = "auto",
    ) -> None:
        model_dir = Path(model_dir)
        if recipe.pooling not in POOLINGS:
            raise ModelError(f"unknown pooling {recipe.pooling!r}; expected one of {POOLINGS}")
        if attention not in ATTENTION:
            raise BackendError(f"unknown attention {attention!r}; expected one of {ATTENTION}")
        dtype = default_dtype(device) if dtype == "auto" else dtype
        if dtype not in _DTYPES:
            raise BackendError(f"unknown dtype {dtype!r}; expected auto or {', '.join(_DTYPES)}")
        if not device_available(device):
            raise BackendError(f"torch device {device!r} is not available here")
        self.recipe = recipe
        self.device = torch.device(device)
        self.explicit = attention == "explicit" or (attention == "auto" and device == "mps")

        cfg, config_path = read_config(model_dir)
        model_type = model_type_of(cfg, config_path, FAMILIES, "torch")
        family = FAMILIES[model_type]
        hidden = hidden_size_of(cfg, config_path, recipe.dim)
        try:
            expected = family.shapes(cfg)
        except KeyError as e:
            raise ModelError(f"{config_path}: missing config key {e}") from e
        weights, origin = normalise_keys(*read_weights(model_dir), family.prefix)
        check_weights(weights, origin, expected, model_dir)
        weights = to_device(weights, self.device, _DTYPES[dtype])
        # Read back: what the loaded tensors really are.
        loaded = next(iter(weights.values()))
        try:
            # The model consumes `weights` (fusing projections frees the unfused copies).
            self.model: TorchModel | None = family.build(cfg, weights, config_path)
        except KeyError as e:
            raise ModelError(f"{config_path}: missing config key {e}") from e
        # The forward iterates these: with a `pause`, it can stop between two layers.
        self._layers = self.model.layers = Layers(self.model.layers)
        self._vocab = int(cfg["vocab_size"])
        self.info = BackendInfo(
            backend="torch",
            device=loaded.device.type,
            dtype=str(loaded.dtype).removeprefix("torch."),
            dim=hidden,
            pooling=recipe.pooling,
            max_tokens=recipe.max_tokens,
        )
        log.info(
            "torch: loaded %s (%s) on %s as %s, %s attention",
            model_dir,
            model_type,
            self.info.device,
            self.info.dtype,
            "explicit" if self.explicit else "SDPA",
        )

    def embed(self, batch: Batch, pause: Pause | None = None) -> np.ndarray:
        """Pooled, not normalised, float32 [B, dim] vectors; `pause` is called between layers
        (not in a pass run from inside a pause)."""
        model = self.model
        if model is None:
            raise BackendError("torch embedder is closed")
        ids_np, mask_np = checked_batch(batch, self._vocab, model.max_positions)
        b, t = ids_np.shape
        if b == 0:
            return np.zeros((0, self.info.dim), dtype=np.float32)
        layers = self._layers
        outer = layers.pause  # set: this is a pass run from inside another's pause
        layers.pause = pause if outer is None else None
        try:
            with torch.inference_mode():
                ids = torch.from_numpy(np.ascontiguousarray(ids_np, dtype=np.int64)).to(self.device)
                mask = torch.from_numpy(np.ascontiguousarray(mask_np != 0)).to(self.device)
                # No padding at all (common: batches are length-sorted): no mask, faster kernels.
                real = None if bool(mask.all()) else mask
                hidden = model.forward(ids, real, explicit=self.explicit)
                out = pool(hidden, mask, self.recipe.pooling).float().cpu().numpy()
        finally:
            layers.pause = outer
        bad = np.flatnonzero(~np.isfinite(out).all(axis=1))
        if bad.size:
            raise BackendError(
                f"torch produced non-finite vectors for batch rows {bad.tolist()} "
                f"(batch shape {b}x{t}, {self.info.device} {self.info.dtype})"
            )
        return out

    def clear_cache(self) -> None:
        if self.device.type == "mps":
            torch.mps.empty_cache()
        elif self.device.type == "cuda":
            torch.cuda.empty_cache()

    def close(self) -> None:
        self.model = None
        self.clear_cache()


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """[B, T, H] hidden states -> [B, H]; `mask` is 1/True on real tokens, any padding side."""
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    if pooling == "last_token":
        # Index of each row's last real token: correct for left and right padding alike.
        positions = torch.arange(mask.shape[1], device=mask.device)
        return hidden[rows, (positions * mask.long()).argmax(dim=1)]
    if pooling == "mean":
        # Summed in float32 whatever the compute dtype (a no-op on CPU): fp16 sums overflow.
        m = mask.unsqueeze(-1).float()
        return (hidden.float() * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
    if pooling == "cls":
        return hidden[rows, mask.long().argmax(dim=1)]  # the first real token
    raise ModelError(f"unknown pooling {pooling!r}")


def device_available(device: str) -> bool:
    if device == "cpu":
        return True
    if device == "cuda":
        return bool(torch.cuda.is_available())
    if device == "mps":
        return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    return False


# ----------------------------------------------------------------------------- loading


def read_weights(model_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Path]]:
    """All tensors of a (possibly sharded) checkpoint, on CPU as stored, and the file of each."""
    weights: dict[str, torch.Tensor] = {}
    origin: dict[str, Path] = {}
    for f in weight_files(model_dir):
        try:
            with safe_open(str(f), framework="pt") as st:
                for key in st.keys():  # noqa: SIM118 - safe_open is not a Mapping
                    weights[key] = st.get_tensor(key)
                    origin[key] = f
        except (SafetensorError, OSError, RuntimeError, ValueError) as e:
            raise ModelError(f"{f}: cannot read safetensors: {e}") from e
    return weights, origin


def check_weights(
    weights: dict[str, torch.Tensor],
    origin: dict[str, Path],
    expected: dict[str, tuple[int, ...]],
    model_dir: Path,
) -> None:
    """Every expected key present with its shape and a floating dtype, nothing unexplained."""
    check_keys(
        weights.keys(),
        expected.keys(),
        origin,
        model_dir,
        refused=(
            ".scales",
            "quantised weights are MLX-only; the torch backend needs unquantised safetensors",
        ),
    )
    for k, shape in expected.items():
        got = weights[k]
        if tuple(got.shape) != shape:
            raise ModelError(
                f"{origin[k]}: weight {k!r} has shape {tuple(got.shape)}, "
                f"config.json implies {shape}"
            )
        if not got.is_floating_point():
            raise ModelError(f"{origin[k]}: weight {k!r} has dtype {got.dtype}, expected floats")


def to_device(
    weights: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """Cast once (bf16 checkpoints become float32 on CPU, float16 on accelerators) and move,
    in place, so the stored copy of each tensor is freed as soon as its cast exists."""
    try:
        for k in list(weights):
            weights[k] = weights[k].to(device=device, dtype=dtype)
        return weights
    except (RuntimeError, AssertionError) as e:  # AssertionError: torch built without CUDA
        raise BackendError(f"cannot move the weights to torch device {device}: {e}") from e
