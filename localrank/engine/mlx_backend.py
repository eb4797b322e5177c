"""MLX backend: Metal on Apple GPUs, mlx[cpu] elsewhere (used here for parity tests).

The forward passes are our own (Qwen3 and BERT, ~100 lines each) rather than mlx-embeddings',
which NaNs left-padded Qwen3 rows (additive -inf mask) and ignores a rope_theta written only
under `rope_parameters`. Attention masks here are boolean and every query may always attend to
itself, so no softmax row is ever empty and padding cannot poison real rows.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, cast

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from localrank.engine.batching import checked_batch
from localrank.engine.model_files import (
    check_keys,
    hidden_size_of,
    model_type_of,
    normalise_keys,
    qwen3_rope_theta,
    read_config,
    weight_files,
)
from localrank.engine.types import BackendInfo, Batch, Recipe
from localrank.errors import BackendError, ModelError

log = logging.getLogger(__name__)

# A boolean [B, 1, T, T] array, "causal", or None (no mask needed).
Mask = mx.array | str | None
DTYPES: dict[str, mx.Dtype] = {
    "float32": mx.float32,
    "float16": mx.float16,
    "bfloat16": mx.bfloat16,
}
POOLINGS = ("last_token", "mean", "cls")
# Checkpoint entries that are not part of the embedding model (LM / pretraining heads, buffers).


# ----------------------------------------------------------------------------- Qwen3


class Qwen3Attention(nn.Module):
    def __init__(self, cfg: dict[str, Any], rope_theta: float) -> None:
        super().__init__()
        hidden, bias = cfg["hidden_size"], bool(cfg.get("attention_bias", False))
        self.n_heads = cfg["num_attention_heads"]
        self.n_kv = cfg.get("num_key_value_heads") or self.n_heads
        self.head_dim = cfg.get("head_dim") or hidden // self.n_heads
        self.rope_theta = rope_theta
        self.q_proj = nn.Linear(hidden, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden, self.n_kv * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden, self.n_kv * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, hidden, bias=bias)
        # Qwen3: RMSNorm over head_dim, per head, before RoPE.
        self.q_norm = nn.RMSNorm(self.head_dim, eps=cfg["rms_norm_eps"])
        self.k_norm = nn.RMSNorm(self.head_dim, eps=cfg["rms_norm_eps"])

    def __call__(self, x: mx.array, mask: Mask) -> mx.array:
        b, t, _ = x.shape
        q = self.q_norm(self.q_proj(x).reshape(b, t, self.n_heads, -1)).transpose(0, 2, 1, 3)
        k = self.k_norm(self.k_proj(x).reshape(b, t, self.n_kv, -1)).transpose(0, 2, 1, 3)
        v = self.v_proj(x).reshape(b, t, self.n_kv, -1).transpose(0, 2, 1, 3)
        # Positions 0..T-1 whatever the padding, as transformers' Qwen3Model does without
        # position_ids. traditional=False is the rotate-half layout HF uses.
        q = mx.fast.rope(q, self.head_dim, traditional=False, base=self.rope_theta, scale=1.0,
                         offset=0)
        k = mx.fast.rope(k, self.head_dim, traditional=False, base=self.rope_theta, scale=1.0,
                         offset=0)
        o = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.head_dim**-0.5, mask=mask)
        return self.o_proj(o.transpose(0, 2, 1, 3).reshape(b, t, -1))


class Qwen3MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(nn.silu(self.gate_proj(x)) * self.up_proj(x))


class Qwen3Layer(nn.Module):
    def __init__(self, cfg: dict[str, Any], rope_theta: float) -> None:
        super().__init__()
        self.self_attn = Qwen3Attention(cfg, rope_theta)
        self.mlp = Qwen3MLP(cfg["hidden_size"], cfg["intermediate_size"])
        self.input_layernorm = nn.RMSNorm(cfg["hidden_size"], eps=cfg["rms_norm_eps"])
        self.post_attention_layernorm = nn.RMSNorm(cfg["hidden_size"], eps=cfg["rms_norm_eps"])

    def __call__(self, x: mx.array, mask: Mask) -> mx.array:
        x = x + self.self_attn(self.input_layernorm(x), mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen3(nn.Module):
    causal = True

    def __init__(self, cfg: dict[str, Any], source: Path) -> None:
        super().__init__()
        if cfg.get("hidden_act", "silu") != "silu":
            raise ModelError(f"{source}: Qwen3 hidden_act={cfg['hidden_act']!r} is not supported")
        if cfg.get("use_sliding_window"):
            raise ModelError(f"{source}: Qwen3 with use_sliding_window=true is not supported")
        theta = qwen3_rope_theta(cfg, source)
        self.embed_tokens = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"])
        self.layers = [Qwen3Layer(cfg, theta) for _ in range(cfg["num_hidden_layers"])]
        self.norm = nn.RMSNorm(cfg["hidden_size"], eps=cfg["rms_norm_eps"])

    def __call__(self, ids: mx.array, mask: Mask) -> mx.array:
        h = self.embed_tokens(ids)
        for layer in self.layers:
            h = layer(h, mask)
        return self.norm(h)


# ----------------------------------------------------------------------------- BERT


class BertSelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)

    def __call__(self, x: mx.array, mask: Mask) -> mx.array:
        b, t, _ = x.shape
        q, k, v = (p(x).reshape(b, t, self.heads, -1).transpose(0, 2, 1, 3)
                   for p in (self.query, self.key, self.value))
        o = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.head_dim**-0.5, mask=mask)
        return o.transpose(0, 2, 1, 3).reshape(b, t, -1)


class BertDenseNorm(nn.Module):
    """HF's BertSelfOutput / BertOutput: dense, residual, post-LayerNorm."""

    def __init__(self, d_in: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def __call__(self, x: mx.array, residual: mx.array) -> mx.array:
        return self.LayerNorm(self.dense(x) + residual)


class BertAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, eps: float) -> None:
        super().__init__()
        self.self = BertSelfAttention(hidden, heads)  # HF's key name
        self.output = BertDenseNorm(hidden, hidden, eps)

    def __call__(self, x: mx.array, mask: Mask) -> mx.array:
        return self.output(self.self(x, mask), x)


class BertIntermediate(nn.Module):
    def __init__(self, hidden: int, intermediate: int, act: str, source: Path) -> None:
        super().__init__()
        acts = {"gelu": nn.gelu, "gelu_new": nn.gelu_approx, "gelu_pytorch_tanh": nn.gelu_approx,
                "relu": nn.relu}
        if act not in acts:
            raise ModelError(f"{source}: BERT hidden_act={act!r} is not supported")
        self.act = acts[act]
        self.dense = nn.Linear(hidden, intermediate)

    def __call__(self, x: mx.array) -> mx.array:
        return self.act(self.dense(x))


class BertLayer(nn.Module):
    def __init__(self, cfg: dict[str, Any], source: Path) -> None:
        super().__init__()
        hidden, eps = cfg["hidden_size"], cfg.get("layer_norm_eps", 1e-12)
        self.attention = BertAttention(hidden, cfg["num_attention_heads"], eps)
        self.intermediate = BertIntermediate(hidden, cfg["intermediate_size"],
                                             cfg.get("hidden_act", "gelu"), source)
        self.output = BertDenseNorm(cfg["intermediate_size"], hidden, eps)

    def __call__(self, x: mx.array, mask: Mask) -> mx.array:
        a = self.attention(x, mask)
        return self.output(self.intermediate(a), a)


class BertEmbeddings(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        hidden = cfg["hidden_size"]
        self.word_embeddings = nn.Embedding(cfg["vocab_size"], hidden)
        self.position_embeddings = nn.Embedding(cfg["max_position_embeddings"], hidden)
        self.token_type_embeddings = nn.Embedding(cfg.get("type_vocab_size", 2), hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=cfg.get("layer_norm_eps", 1e-12))

    def __call__(self, ids: mx.array) -> mx.array:
        positions = mx.arange(ids.shape[1])[None]
        token_types = mx.zeros_like(ids)  # single-segment inputs only
        h = (self.word_embeddings(ids) + self.position_embeddings(positions)
             + self.token_type_embeddings(token_types))
        return self.LayerNorm(h)


class BertEncoder(nn.Module):
    def __init__(self, cfg: dict[str, Any], source: Path) -> None:
        super().__init__()
        self.layer = [BertLayer(cfg, source) for _ in range(cfg["num_hidden_layers"])]


class Bert(nn.Module):
    causal = False

    def __init__(self, cfg: dict[str, Any], source: Path) -> None:
        super().__init__()
        if cfg.get("position_embedding_type", "absolute") != "absolute":
            raise ModelError(f"{source}: BERT position_embedding_type="
                             f"{cfg['position_embedding_type']!r} is not supported")
        self.max_positions = int(cfg["max_position_embeddings"])
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg, source)

    def __call__(self, ids: mx.array, mask: Mask) -> mx.array:
        h = self.embeddings(ids)
        for layer in self.encoder.layer:
            h = layer(h, mask)
        return h


ARCHITECTURES: dict[str, tuple[type[Qwen3] | type[Bert], str]] = {
    # model_type -> (module, the prefix *For... / pretraining checkpoints add to every key)
    "qwen3": (Qwen3, "model."),
    "bert": (Bert, "bert."),
}


# ----------------------------------------------------------------------------- loading


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
    q = cfg.get("quantization") or cfg.get("quantization_config")
    if q is None:
        return None
    if "group_size" not in q or "bits" not in q:
        raise ModelError(f"{source}: quantization {q!r} is not an MLX (group_size, bits) "
                         "quantization; use an mlx-community checkpoint or unquantised weights")
    return dict(q)


def apply_quantization(model: nn.Module, q: dict[str, Any], weights: dict[str, mx.array],
                       prefix: str) -> None:
    """Swap in QuantizedLinear / QuantizedEmbedding wherever the checkpoint has `.scales`,
    with per-layer overrides as mlx-lm writes them (keyed by module path, maybe prefixed)."""
    default = {"group_size": int(q["group_size"]), "bits": int(q["bits"]),
               "mode": q.get("mode", "affine")}

    def predicate(path: str, module: nn.Module) -> bool | dict[str, Any]:
        if f"{path}.scales" not in weights or not hasattr(module, "to_quantized"):
            return False
        override = q.get(path, q.get(prefix + path))
        if isinstance(override, dict):
            return {**default, **override}
        return dict(default)

    nn.quantize(model, class_predicate=predicate)


def check_and_load(model: nn.Module, weights: dict[str, mx.array], origin: dict[str, Path],
                   model_dir: Path, dtype: mx.Dtype) -> None:
    expected = flat_parameters(model)
    check_keys(weights.keys(), expected.keys(), origin, model_dir)
    for k, ref in expected.items():
        if weights[k].shape != ref.shape:
            raise ModelError(f"{origin[k]}: weight {k!r} has shape {tuple(weights[k].shape)}, "
                             f"config.json implies {tuple(ref.shape)}")
    # Quantised (integer) tensors stay as stored; floating tensors take the compute dtype.
    cast = [(k, v.astype(dtype) if mx.issubdtype(v.dtype, mx.floating) else v)
            for k, v in weights.items()]
    model.update(tree_unflatten(cast))
    mx.eval(model.parameters())


def flat_parameters(model: nn.Module) -> dict[str, mx.array]:
    return cast("dict[str, mx.array]", dict(tree_flatten(model.parameters())))


def dtype_name(dtype: mx.Dtype) -> str:
    for name, d in DTYPES.items():
        if d == dtype:
            return name
    return str(dtype).rsplit(".", 1)[-1]


# ----------------------------------------------------------------------------- the embedder


class MLXEmbedder:
    """A Qwen3 or BERT model on MLX, following the Embedder protocol."""

    def __init__(self, model_dir: Path, recipe: Recipe, *, dtype: str = "auto",
                 device: str = "auto") -> None:
        model_dir = Path(model_dir)
        if recipe.pooling not in POOLINGS:
            raise ModelError(f"unknown pooling {recipe.pooling!r}; expected one of {POOLINGS}")
        self._device, device_name = self._pick_device(device)
        cfg, config_path = read_config(model_dir)
        model_type = model_type_of(cfg, config_path, ARCHITECTURES, "MLX")
        arch, prefix = ARCHITECTURES[model_type]
        hidden = hidden_size_of(cfg, config_path, recipe.dim)
        q = quantization_config(cfg, config_path)

        with mx.stream(self._device):
            weights, origin = normalise_keys(*read_weights(model_dir), prefix)
            if q is None and any(k.endswith(".scales") for k in weights):
                raise ModelError(f"{config_path}: weights are quantised (.scales present) but "
                                 "config.json has no 'quantization' entry")
            compute = self._pick_dtype(dtype, device_name, q, weights)
            try:
                model = arch(cfg, config_path)
            except KeyError as e:
                raise ModelError(f"{config_path}: missing config key {e}") from e
            if q is not None:
                apply_quantization(model, q, weights, prefix)
            check_and_load(model, weights, origin, model_dir, compute)
        model.eval()
        self._model: Qwen3 | Bert | None = model
        self._recipe = recipe
        self._vocab = int(cfg["vocab_size"])
        # Read back: the dtype the loaded floating parameters really have.
        floats = [v.dtype for v in flat_parameters(model).values()
                  if mx.issubdtype(v.dtype, mx.floating)]
        self.info = BackendInfo(backend="mlx", device=device_name, dtype=dtype_name(floats[0]),
                                dim=hidden, pooling=recipe.pooling, max_tokens=recipe.max_tokens)
        self.quantization = None if q is None else {k: q[k] for k in ("group_size", "bits")}
        log.info("mlx: loaded %s (%s) on %s as %s%s", model_dir, model_type, device_name,
                 self.info.dtype, f", quantised {self.quantization}" if q else "")

    @staticmethod
    def _pick_device(device: str) -> tuple[mx.Device, str]:
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

    @staticmethod
    def _pick_dtype(dtype: str, device: str, q: dict[str, Any] | None,
                    weights: dict[str, mx.array]) -> mx.Dtype:
        if dtype != "auto":
            if dtype not in DTYPES:
                raise BackendError(f"unknown dtype {dtype!r}; expected auto or {', '.join(DTYPES)}")
            return DTYPES[dtype]
        if q is not None:
            # Quantised checkpoints: compute in the dtype their scales were saved in.
            return next(v.dtype for k, v in weights.items() if k.endswith(".scales"))
        return mx.float16 if device == "gpu" else mx.float32

    def embed(self, batch: Batch) -> np.ndarray:
        """Pooled, not normalised, float32 [B, dim] vectors."""
        model = self._model
        if model is None:
            raise BackendError("MLX embedder is closed")
        ids_np, mask_np = checked_batch(
            batch, self._vocab, model.max_positions if isinstance(model, Bert) else None)
        b, t = ids_np.shape
        if b == 0:
            return np.zeros((0, self.info.dim), dtype=np.float32)
        real = mask_np != 0
        with mx.stream(self._device):
            ids = mx.array(ids_np.astype(np.int32))
            h = model(ids, attention_mask(real, causal=model.causal))
            rows = mx.arange(b)
            if self._recipe.pooling == "last_token":
                # Last real token from the mask: right for left padding and for right padding.
                last = t - 1 - np.argmax(real[:, ::-1], axis=1)
                pooled = h[rows, mx.array(last.astype(np.int32))].astype(mx.float32)
            elif self._recipe.pooling == "cls":
                first = np.argmax(real, axis=1)
                pooled = h[rows, mx.array(first.astype(np.int32))].astype(mx.float32)
            else:
                m = mx.array(real.astype(np.float32))[..., None]
                summed = (h.astype(mx.float32) * m).sum(axis=1)
                pooled = summed / mx.maximum(m.sum(axis=1), 1e-9)
            mx.eval(pooled)
            out = np.array(pooled, dtype=np.float32)
            del h, pooled
        # MLX caches freed buffers per shape; varying lengths would grow memory without bound.
        mx.clear_cache()
        bad = np.flatnonzero(~np.isfinite(out).all(axis=1))
        if bad.size:
            raise BackendError(f"MLX produced non-finite vectors for batch rows {bad.tolist()} "
                               f"(batch shape {b}x{t}, dtype {self.info.dtype})")
        return out

    def close(self) -> None:
        self._model = None
        mx.clear_cache()


def attention_mask(real: np.ndarray, *, causal: bool) -> Mask:
    """A boolean [B, 1, T, T] mask (True = may attend), or a cheaper equivalent without padding.

    Each query may always attend to itself, so a padding query (which under a causal mask with
    left padding sees no real key) never gets an empty softmax: finite everywhere, and real
    rows, which already see themselves, are unchanged.
    """
    if real.all():
        return "causal" if causal else None
    t = real.shape[1]
    keys = mx.array(real)[:, None, None, :]
    allowed = keys & mx.array(np.tril(np.ones((t, t), dtype=bool))) if causal else keys
    return allowed | mx.eye(t, dtype=mx.bool_)


__all__ = ["MLXEmbedder", "attention_mask"]
