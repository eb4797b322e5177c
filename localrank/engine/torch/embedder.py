"""TorchEmbedder: load a checkpoint onto one torch device, run its family's forward, pool.

Weights are mapped from safetensors (never read twice, see weights.py), checked against the
shapes config.json implies, and placed on the device in the compute dtype (a no-op for tensors
already right); the forwards live in qwen3.py and bert.py. The compute dtype is decided once, with
its reason (precision.py): on CPU, bfloat16 where the processor has it natively and a probe
matmul confirms it is faster, float32 otherwise.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from localrank.engine.batching import checked_batch
from localrank.engine.machine import read_cpu_features, read_topology
from localrank.engine.model_files import (
    check_keys,
    hidden_size_of,
    model_type_of,
    normalise_keys,
    read_config,
    weight_files,
)
from localrank.engine.precision import (
    DTYPES,
    DtypeChoice,
    accelerator_dtype,
    choose_cpu_dtype,
    requested,
)
from localrank.engine.torch.cpu import bf16_timing, configure_threads
from localrank.engine.torch.families import FAMILIES, Family
from localrank.engine.torch.layers import TorchModel
from localrank.engine.torch.weights import MappedCheckpoint, Placement
from localrank.engine.types import POOLINGS, BackendInfo, Batch, Recipe
from localrank.errors import BackendError, ModelError

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
ATTENTION = ("auto", "sdpa", "explicit")


def default_dtype(device: str) -> str:
    """The dtype "auto" means before the CPU is looked at: half precision on accelerators,
    float32 on CPU (which `pick_dtype` upgrades to bfloat16 where the CPU has it natively)."""
    return "float32" if device == "cpu" else "float16"


def pick_dtype(
    dtype: str, device: str, model_type: str, family: Family, source: str
) -> DtypeChoice:
    """The compute dtype and why: the setting if explicit, else the device's rule."""
    if dtype != "auto":
        if dtype not in _DTYPES:
            raise BackendError(f"unknown dtype {dtype!r}; expected auto or {', '.join(DTYPES)}")
        choice = requested(dtype, source)
        if device == "cpu" and dtype != "float32" and read_cpu_features().native_bf16() is None:
            log.warning("dtype %s on a CPU without native half precision: expect it slow", dtype)
        return choice
    if device != "cpu":
        return accelerator_dtype(device)
    if not family.mixed_precision:
        return DtypeChoice(
            "float32",
            f"the {model_type} forward computes in float32 on CPU (bfloat16 is chosen only for "
            "families that keep norms and softmax in float32)",
        )
    return choose_cpu_dtype(read_cpu_features(), bf16_timing)


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
        threads: int = 0,
        dtype_source: str = "the dtype setting",
    ) -> None:
        model_dir = Path(model_dir)
        if recipe.pooling not in POOLINGS:
            raise ModelError(f"unknown pooling {recipe.pooling!r}; expected one of {POOLINGS}")
        if attention not in ATTENTION:
            raise BackendError(f"unknown attention {attention!r}; expected one of {ATTENTION}")
        if not device_available(device):
            raise BackendError(f"torch device {device!r} is not available here")
        self.recipe = recipe
        self.device = torch.device(device)
        self.explicit = attention == "explicit" or (attention == "auto" and device == "mps")
        if device == "cpu":
            # Before anything runs (the dtype probe included): one thread per physical core.
            configure_threads(threads or read_topology().physical_cores())

        cfg, config_path = read_config(model_dir)
        model_type = model_type_of(cfg, config_path, FAMILIES, "torch")
        family = FAMILIES[model_type]
        hidden = hidden_size_of(cfg, config_path, recipe.dim)
        try:
            expected = family.shapes(cfg)
        except KeyError as e:
            raise ModelError(f"{config_path}: missing config key {e}") from e
        checkpoint = MappedCheckpoint.open(weight_files(model_dir))
        weights, origin = normalise_keys(checkpoint.tensors, checkpoint.origin, family.prefix)
        checkpoint.tensors = {}  # the model takes ownership of what it keeps
        check_weights(weights, origin, expected, model_dir)
        choice = pick_dtype(dtype, device, model_type, family, dtype_source)
        place = Placement(self.device, _DTYPES[choice.dtype], checkpoint)
        try:
            # The model consumes `weights`, placing each (a no-op when already right).
            self.model: TorchModel | None = family.build(cfg, weights, config_path, place)
        except KeyError as e:
            raise ModelError(f"{config_path}: missing config key {e}") from e
        except (RuntimeError, AssertionError) as e:  # AssertionError: torch built without CUDA
            raise BackendError(f"cannot place the weights on torch device {device}: {e}") from e
        self._vocab = int(cfg["vocab_size"])
        self.info = BackendInfo(
            backend="torch",
            device=self.device.type,
            dtype=str(place.dtype).removeprefix("torch."),
            dim=hidden,
            pooling=recipe.pooling,
            max_tokens=recipe.max_tokens,
            dtype_reason=choice.reason,
            threads=torch.get_num_threads() if device == "cpu" else 0,
        )
        log.info(
            "torch: loaded %s (%s) on %s as %s (%s), %s attention%s",
            model_dir,
            model_type,
            self.info.device,
            self.info.dtype,
            choice.reason,
            "explicit" if self.explicit else "SDPA",
            f", {self.info.threads} threads" if self.info.threads else "",
        )

    def embed(self, batch: Batch) -> np.ndarray:
        """Pooled, not normalised, float32 [B, dim] vectors."""
        model = self.model
        if model is None:
            raise BackendError("torch embedder is closed")
        ids_np, mask_np = checked_batch(batch, self._vocab, model.max_positions)
        b, t = ids_np.shape
        if b == 0:
            return np.zeros((0, self.info.dim), dtype=np.float32)
        with torch.inference_mode():
            ids = torch.from_numpy(np.ascontiguousarray(ids_np, dtype=np.int64)).to(self.device)
            mask = torch.from_numpy(np.ascontiguousarray(mask_np != 0)).to(self.device)
            # No padding at all (common: batches are length-sorted): no mask, faster kernels.
            hidden = model.forward(ids, None if bool(mask.all()) else mask, explicit=self.explicit)
            out = pool(hidden, mask, self.recipe.pooling).float().cpu().numpy()
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
