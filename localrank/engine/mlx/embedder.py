"""MLXEmbedder: Metal on Apple GPUs, mlx[cpu] elsewhere (used here for parity tests).

Picks the device and compute dtype, builds the family's model, swaps in quantised layers where
an mlx-community checkpoint has them, checks every weight against the model, and pools.

`--dtype int8` quantises a float checkpoint at load: every linear layer and the token embedding
table to 8 bits in groups of INT8_GROUP_SIZE (MLX's affine quantisation: a scale and a bias per
group), activations in the compute dtype (float32 on CPU, float16 on Metal), and the norms, RoPE,
softmax and pooling in float32 as for the other dtypes. Matmuls run through MLX's quantised
kernels, which read a quarter of float32's bytes.

dtype "auto" does the same for Qwen3 on Metal where a probe (`int8_timing`) runs MLX's
quantised matmul MIN_INT8_SPEEDUP faster than float16, and keeps it only if the calibration
texts' vectors stay within INT8_MIN_COSINE of the float model's (else the float model is built
again); it keeps the precision the model's collections hold (precision.float_or_int8). On
mlx[cpu] it is not probed: MLX's CPU kernels are compute-bound there (1.07x, measured).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, cast

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from localrank.engine.batching import checked_batch, pad
from localrank.engine.mlx.families import FAMILIES
from localrank.engine.mlx.layers import MLXModel, attention_mask
from localrank.engine.model_files import (
    check_keys,
    hidden_size_of,
    model_type_of,
    normalise_keys,
    read_config,
    weight_files,
)
from localrank.engine.precision import (
    INT8_MIN_COSINE,
    DtypeChoice,
    float_or_int8,
    int8_inaccurate,
    min_cosine,
)
from localrank.engine.types import POOLINGS, BackendInfo, Batch, Pause, Recipe
from localrank.errors import BackendError, ModelError

log = logging.getLogger(__name__)

DTYPES: dict[str, mx.Dtype] = {
    "float32": mx.float32,
    "float16": mx.float16,
    "bfloat16": mx.bfloat16,
}
INT8 = "int8"  # weights quantised to 8 bits at load (config.DTYPES' name for it)
# Measured min cosine to float32 over the parity texts (all-MiniLM-L6-v2, real weights):
# 0.99967 at 32, 0.99955 at 64, 0.99950 at 128. 64 keeps >= 0.999 with margin at half of
# 32's scale overhead, and is what mlx-community's 8-bit checkpoints use.
INT8_GROUP_SIZE = 64
# The int8 probe: a short query's rows through PROBE_LAYERS projections [N, K], evaluated at
# once (enough bytes that Metal's launch costs do not decide it).
PROBE_ROWS, PROBE_SHAPE, PROBE_LAYERS, PROBE_ROUNDS = 12, (3072, 1024), 8, 3
# Where "auto" probes int8: Metal. mlx[cpu]'s kernels are compute-bound (the probe: 1.07x
# float32, and ~2 s of a start on 2 cores), so it is never chosen there.
INT8_PROBED_ON = ("gpu",)


def read_weights(model_dir: Path) -> tuple[dict[str, mx.array], dict[str, Path]]:
    """All tensors of a (possibly sharded) safetensors checkpoint, and the file of each key."""
    weights: dict[str, mx.array] = {}
    origin: dict[str, Path] = {}
    for f in weight_files(model_dir):
        try:
            loaded = mx.load(str(f))
        except Exception as e:  # mlx raises plain RuntimeError / ValueError
            raise ModelError(f"{f}: cannot read safetensors: {e}") from e
        assert isinstance(loaded, dict)
        for k, v in loaded.items():
            weights[k] = v
            origin[k] = f
    return weights, origin


def quantization_config(cfg: dict[str, Any], source: Path) -> dict[str, Any] | None:
    """config.json's MLX quantisation (group_size, bits, per-layer overrides), or None."""
    q = cfg.get("quantization") or cfg.get("quantization_config")
    if q is None:
        return None
    if "group_size" not in q or "bits" not in q:
        raise ModelError(
            f"{source}: quantization {q!r} is not an MLX (group_size, bits) "
            "quantization; use an mlx-community checkpoint or unquantised weights"
        )
    return dict(q)


def apply_quantization(
    model: nn.Module, q: dict[str, Any], weights: dict[str, mx.array], prefix: str
) -> None:
    """Swap in QuantizedLinear / QuantizedEmbedding wherever the checkpoint has `.scales`,
    with per-layer overrides as mlx-lm writes them (keyed by module path, maybe prefixed)."""
    default = {
        "group_size": int(q["group_size"]),
        "bits": int(q["bits"]),
        "mode": q.get("mode", "affine"),
    }

    def predicate(path: str, module: nn.Module) -> bool | dict[str, Any]:
        if f"{path}.scales" not in weights or not hasattr(module, "to_quantized"):
            return False
        override = q.get(path, q.get(prefix + path))
        if isinstance(override, dict):
            return {**default, **override}
        return dict(default)

    nn.quantize(model, class_predicate=predicate)


def quantise_at_load(model: nn.Module, group_size: int = INT8_GROUP_SIZE) -> int:
    """Quantise the loaded float model's linear layers and embedding tables to 8 bits (layers
    whose input width is not a multiple of `group_size` stay float); the number quantised."""
    done = 0

    def predicate(path: str, module: nn.Module) -> bool:
        nonlocal done
        if not isinstance(module, (nn.Linear, nn.Embedding)):
            return False
        if module.weight.shape[-1] % group_size:
            return False
        done += 1
        return True

    nn.quantize(model, group_size=group_size, bits=8, class_predicate=predicate)
    mx.eval(model.parameters())
    return done


def read_weights_of(model_dir: Path, prefix: str) -> tuple[dict[str, mx.array], dict[str, Path]]:
    """The checkpoint's tensors by the family's names (without `prefix`), and their files."""
    return normalise_keys(*read_weights(model_dir), prefix)


def int8_timing(device: mx.Device, compute: mx.Dtype) -> tuple[float, float]:
    """(float seconds, int8 seconds): a short query's rows through PROBE_LAYERS projections in
    the compute dtype, and through the same weights quantised as dtype int8 quantises them
    (8 bits, groups of INT8_GROUP_SIZE); the best of a few interleaved rounds, wall time (the
    GPU runs them)."""
    n, k = PROBE_SHAPE
    with mx.stream(device):
        x = mx.random.normal((PROBE_ROWS, k), key=mx.random.key(0)).astype(compute)
        ws = [
            (mx.random.normal((n, k), key=mx.random.key(i + 1)) * 0.02).astype(compute)
            for i in range(PROBE_LAYERS)
        ]
        qs = [mx.quantize(w, group_size=INT8_GROUP_SIZE, bits=8) for w in ws]
        mx.eval(x, ws, qs)

        def plain() -> None:
            mx.eval([x @ w.T for w in ws])

        def quantised() -> None:
            mx.eval(
                [
                    mx.quantized_matmul(x, *q, transpose=True, group_size=INT8_GROUP_SIZE, bits=8)
                    for q in qs
                ]
            )

        runs = (plain, quantised)
        best = [float("inf"), float("inf")]
        for _ in range(PROBE_ROUNDS + 1):  # the first round warms both
            for j, run in enumerate(runs):
                started = time.perf_counter()
                run()
                best[j] = min(best[j], time.perf_counter() - started)
    log.debug("mlx int8 probe: %s %.3f ms, int8 %.3f ms", compute, best[0] * 1e3, best[1] * 1e3)
    return best[0], best[1]


def forward_pooled(model: MLXModel, batch: Batch, pooling: str) -> np.ndarray:
    """Pooled float32 [B, dim] vectors of a checked batch (not normalised); the hidden states
    are freed once pooled."""
    real = batch.attention_mask != 0
    ids = mx.array(batch.input_ids.astype(np.int32))
    return pool(model(ids, attention_mask(real, causal=model.causal)), real, pooling)


def check_and_load(
    model: nn.Module,
    weights: dict[str, mx.array],
    origin: dict[str, Path],
    model_dir: Path,
    dtype: mx.Dtype,
    float32_params: tuple[str, ...] = (),
) -> None:
    """Check the weights against the model's own parameters (names, shapes), then load them."""
    expected = flat_parameters(model)
    check_keys(weights.keys(), expected.keys(), origin, model_dir)
    for k, ref in expected.items():
        if weights[k].shape != ref.shape:
            raise ModelError(
                f"{origin[k]}: weight {k!r} has shape {tuple(weights[k].shape)}, "
                f"config.json implies {tuple(ref.shape)}"
            )
    # Quantised (integer) tensors stay as stored; floating tensors take the compute dtype,
    # except the ones the forward uses in float32.
    cast = [
        (
            k,
            (v.astype(mx.float32 if k.endswith(float32_params) else dtype))
            if mx.issubdtype(v.dtype, mx.floating)
            else v,
        )
        for k, v in weights.items()
    ]
    model.update(tree_unflatten(cast))
    mx.eval(model.parameters())


def flat_parameters(model: nn.Module) -> dict[str, mx.array]:
    """The model's parameters by dotted name, as checkpoints key them."""
    return cast("dict[str, mx.array]", dict(tree_flatten(model.parameters())))


def dtype_name(dtype: mx.Dtype) -> str:
    """ "float32", "float16", "bfloat16" (or mlx's own name for anything else)."""
    for name, d in DTYPES.items():
        if d == dtype:
            return name
    return str(dtype).rsplit(".", 1)[-1]


def pick_device(device: str) -> tuple[mx.Device, str]:
    """The MLX device for a setting (auto, gpu or cpu) and its name; a clear error for a GPU
    that is not there or an unknown name."""
    metal = mx.metal.is_available()
    if device == "auto":
        device = "gpu" if metal else "cpu"
    if device == "gpu":
        if not metal:
            raise BackendError("MLX device 'gpu' requested but no Metal GPU is available")
        return mx.Device(mx.gpu), "gpu"
    if device == "cpu":
        return mx.Device(mx.cpu), "cpu"
    raise BackendError(f"unknown MLX device {device!r}; expected auto, gpu or cpu")


def pool(h: mx.array, real: np.ndarray, pooling: str) -> np.ndarray:
    """Hidden states [B, T, H] pooled per the recipe over the real tokens, as float32 numpy."""
    b, t = real.shape
    rows = mx.arange(b)
    if pooling == "last_token":
        # Last real token from the mask: right for left padding and for right padding.
        last = t - 1 - np.argmax(real[:, ::-1], axis=1)
        pooled = h[rows, mx.array(last.astype(np.int32))].astype(mx.float32)
    elif pooling == "cls":
        first = np.argmax(real, axis=1)
        pooled = h[rows, mx.array(first.astype(np.int32))].astype(mx.float32)
    else:
        m = mx.array(real.astype(np.float32))[..., None]
        summed = (h.astype(mx.float32) * m).sum(axis=1)
        pooled = summed / mx.maximum(m.sum(axis=1), 1e-9)
    mx.eval(pooled)
    return np.array(pooled, dtype=np.float32)


def finite(out: np.ndarray, dtype: str) -> np.ndarray:
    """`out` after freeing MLX's buffer cache (it keeps freed buffers per shape: varying
    lengths would grow memory without bound); a BackendError for a non-finite row."""
    mx.clear_cache()
    bad = np.flatnonzero(~np.isfinite(out).all(axis=1))
    if bad.size:
        raise BackendError(
            f"MLX produced non-finite vectors for batch rows {bad.tolist()} "
            f"(batch shape {out.shape[0]} rows, dtype {dtype})"
        )
    return out


class MLXEmbedder:
    """A Qwen3 or BERT model on MLX, following the Embedder protocol."""

    def __init__(
        self,
        model_dir: Path,
        recipe: Recipe,
        *,
        dtype: str = "auto",
        device: str = "auto",
        dtype_source: str = "the dtype setting",
        calibration: Sequence[Sequence[int]] = (),
        held: str | None = None,
    ) -> None:
        """`calibration`: token ids of a few fixed texts, on which int8 chosen by "auto" is
        checked against the float model (INT8_MIN_COSINE) before it is kept. `held`: the
        precision the model's collections hold, which "auto" keeps."""
        model_dir = Path(model_dir)
        if recipe.pooling not in POOLINGS:
            raise ModelError(f"unknown pooling {recipe.pooling!r}; expected one of {POOLINGS}")
        self._device, device_name = pick_device(device)
        cfg, config_path = read_config(model_dir)
        model_type = model_type_of(cfg, config_path, FAMILIES, "MLX")
        family = FAMILIES[model_type]
        hidden = hidden_size_of(cfg, config_path, recipe.dim)
        q = quantization_config(cfg, config_path)

        with mx.stream(self._device):
            weights, origin = read_weights_of(model_dir, family.prefix)
            if q is None and any(k.endswith(".scales") for k in weights):
                raise ModelError(
                    f"{config_path}: weights are quantised (.scales present) but "
                    "config.json has no 'quantization' entry"
                )
            compute, reason = self._pick_dtype(dtype, device_name, q, weights, dtype_source)
            if dtype == INT8 and q is not None:
                raise BackendError(
                    f"{config_path}: the checkpoint is already quantised ({q['bits']}-bit); "
                    f"dtype {INT8} quantises float weights at load: use dtype auto"
                )
            choice = DtypeChoice(INT8 if dtype == INT8 else dtype_name(compute), reason)
            if dtype == "auto" and q is None:
                probed = family.int8_auto and device_name in INT8_PROBED_ON
                offered = probed or held == INT8
                timing = partial(int8_timing, self._device, compute) if offered else None
                choice = float_or_int8(choice, timing, held)

            def build(weights: dict[str, mx.array], origin: dict[str, Path]) -> MLXModel:
                try:
                    model = family.build(cfg, config_path)
                except KeyError as e:
                    raise ModelError(f"{config_path}: missing config key {e}") from e
                if q is not None:
                    apply_quantization(model, q, weights, family.prefix)
                check_and_load(model, weights, origin, model_dir, compute, family.float32_params)
                model.compute_dtype = compute
                model.eval()
                return model

            model = build(weights, origin)
            del weights
            quantised = 0
            if choice.dtype == INT8:
                checked = dtype == "auto" and held != INT8  # asked for or held: kept as is
                model, quantised, choice = self._quantise(
                    model,
                    choice,
                    calibration if checked else (),
                    recipe,
                    rebuild=lambda: build(*read_weights_of(model_dir, family.prefix)),
                    base=dtype_name(compute),
                )
            reason = choice.reason
        self._model: MLXModel | None = model
        self._recipe = recipe
        self._vocab = int(cfg["vocab_size"])
        # Read back: the dtype the loaded floating parameters really have (the float32 norms
        # aside).
        floats = [
            v.dtype
            for k, v in flat_parameters(model).items()
            if mx.issubdtype(v.dtype, mx.floating) and not k.endswith(family.float32_params)
        ]
        self.info = BackendInfo(
            backend="mlx",
            device=device_name,
            dtype=INT8 if quantised else dtype_name(floats[0]),
            dim=hidden,
            pooling=recipe.pooling,
            max_tokens=recipe.max_tokens,
            dtype_reason=reason,
        )
        self.quantization = None if q is None else {k: q[k] for k in ("group_size", "bits")}
        if quantised:
            self.quantization = {"group_size": INT8_GROUP_SIZE, "bits": 8}
        log.info(
            "mlx: loaded %s (%s) on %s as %s (%s)%s",
            model_dir,
            model_type,
            device_name,
            self.info.dtype,
            reason,
            f", quantised {self.quantization}" if q else "",
        )

    @staticmethod
    def _quantise(
        model: MLXModel,
        choice: DtypeChoice,
        calibration: Sequence[Sequence[int]],
        recipe: Recipe,
        *,
        rebuild: Callable[[], MLXModel],
        base: str,
    ) -> tuple[MLXModel, int, DtypeChoice]:
        """Quantise `model` to 8 bits (the model, how many layers, the choice). With
        `calibration` rows (int8 chosen by "auto"), the rows' vectors are compared before and
        after, and where they are further apart than INT8_MIN_COSINE the float model `rebuild`
        makes is given back instead."""
        rows = [list(r) for r in calibration if len(r)]
        if not rows:
            return model, quantise_at_load(model), choice
        batch = pad(rows, pad_id=recipe.pad_token_id, side=recipe.padding_side, bucket=False)
        before = forward_pooled(model, batch, recipe.pooling)
        quantised = quantise_at_load(model)
        worst = min_cosine(forward_pooled(model, batch, recipe.pooling), before)
        if worst < INT8_MIN_COSINE:
            return rebuild(), 0, int8_inaccurate(choice, worst, base)
        return (
            model,
            quantised,
            DtypeChoice(
                INT8,
                f"{choice.reason}; 8-bit weights in groups of {INT8_GROUP_SIZE}, min cosine "
                f"{worst:.5f} to {base} on {len(rows)} calibration texts",
            ),
        )

    @staticmethod
    def _pick_dtype(
        dtype: str,
        device: str,
        q: dict[str, Any] | None,
        weights: dict[str, mx.array],
        source: str,
    ) -> tuple[mx.Dtype, str]:
        """The compute dtype and why (the setting; the checkpoint's quantisation; the device)."""
        if dtype == INT8:
            compute = mx.float16 if device == "gpu" else mx.float32
            return compute, (
                f"set by {source}: weights quantised to 8 bits at load (groups of "
                f"{INT8_GROUP_SIZE}), activations in {dtype_name(compute)}"
            )
        if dtype != "auto":
            if dtype not in DTYPES:
                raise BackendError(
                    f"unknown dtype {dtype!r}; expected auto, {', '.join(DTYPES)} or {INT8}"
                )
            return DTYPES[dtype], f"set by {source}"
        if q is not None:
            # Quantised checkpoints: compute in the dtype their scales were saved in.
            scales = next(v.dtype for k, v in weights.items() if k.endswith(".scales"))
            return scales, (
                f"the checkpoint is quantised ({q['bits']}-bit); its scales are "
                f"{dtype_name(scales)}"
            )
        if device == "gpu":
            return mx.float16, "float16 on the Metal GPU: half precision is native there"
        return mx.float32, "MLX on CPU computes in float32 (its CPU kernels have no fast bfloat16)"

    def embed(self, batch: Batch, pause: Pause | None = None) -> np.ndarray:
        """Pooled, not normalised, float32 [B, dim] vectors. MLX builds the whole graph and
        evaluates it at once: there is no point between layers to `pause` at."""
        model = self._model
        if model is None:
            raise BackendError("MLX embedder is closed")
        ids_np, mask_np = checked_batch(batch, self._vocab, model.max_positions)
        if ids_np.shape[0] == 0:
            return np.zeros((0, self.info.dim), dtype=np.float32)
        with mx.stream(self._device):
            out = forward_pooled(model, Batch(ids_np, mask_np), self._recipe.pooling)
        return finite(out, self.info.dtype)

    def close(self) -> None:
        self._model = None
        mx.clear_cache()
