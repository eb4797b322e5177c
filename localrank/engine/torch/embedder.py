"""TorchEmbedder: load a checkpoint onto one torch device, run its family's forward, pool.

Weights are mapped from safetensors (never read twice, see weights.py), checked against the
shapes config.json implies, and placed on the device in the compute dtype (a no-op for tensors
already right); the forwards live in qwen3.py and bert.py. The compute dtype is decided once, with
its reason (precision.py): on CPU, bfloat16 where the processor has it natively and a probe
matmul confirms it is faster, float32 otherwise; int8 (int8.py) when asked for, or chosen for a
family whose scheme is accurate enough: the model is built in float32, calibrated on fixed token
batches, its matmul weights quantised, and the float32 weights dropped.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from localrank.engine.batching import checked_batch, pad
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
    INT8,
    INT8_MIN_COSINE,
    MIN_BF16_SPEEDUP,
    MIN_INT8_SPEEDUP,
    DtypeChoice,
    accelerator_dtype,
    choose_cpu_dtype,
    int8_inaccurate,
    min_cosine,
    requested,
)
from localrank.engine.torch import int8
from localrank.engine.torch.cpu import Stackable, bf16_timing, configure_threads, prepack
from localrank.engine.torch.families import FAMILIES, Family
from localrank.engine.torch.layers import Layers, PrefixModel, TorchModel
from localrank.engine.torch.weight_cache import (
    AutoChoice,
    Int8Calibration,
    Int8Weights,
    WeightCache,
)
from localrank.engine.torch.weights import MappedCheckpoint, Placement
from localrank.engine.types import POOLINGS, BackendInfo, BackgroundStopped, Batch, Pause, Recipe
from localrank.errors import BackendError, ModelError

log = logging.getLogger(__name__)

# The dtype weights are placed in; int8 builds the model in float32, then quantises its matmuls.
_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int8": torch.float32,
}
ATTENTION = ("auto", "sdpa", "explicit")


def default_dtype(device: str) -> str:
    """The dtype "auto" means before the CPU is looked at: half precision on accelerators,
    float32 on CPU (which `pick_dtype` upgrades to bfloat16 where the CPU has it natively)."""
    return "float32" if device == "cpu" else "float16"


def auto_inputs(family: Family) -> list[object]:
    """What "auto"'s choice depends on besides the checkpoint: a record of it (AutoChoice) is
    used only while these are unchanged."""
    return [
        torch.__version__,
        torch.backends.cpu.get_cpu_capability(),
        read_cpu_features().native_bf16(),
        family.mixed_precision,
        family.int8_auto,
        MIN_BF16_SPEEDUP,
        MIN_INT8_SPEEDUP,
        INT8_MIN_COSINE,
    ]


def pick_dtype(
    dtype: str, device: str, model_type: str, family: Family, source: str, held: str | None = None
) -> DtypeChoice:
    """The compute dtype and why: the setting if explicit, else the device's rule (which keeps
    the precision `held` by the model's collections: precision.held_precision)."""
    if dtype != "auto":
        if dtype not in _DTYPES:
            raise BackendError(f"unknown dtype {dtype!r}; expected auto or {', '.join(DTYPES)}")
        choice = requested(dtype, source)
        if dtype == "int8" and (device != "cpu" or not int8.supported()):
            raise BackendError(
                f"dtype int8 ({source}) needs localrank's int8 kernel, built at install for "
                f"x86-64 CPUs with AVX2 and FMA; not available on {device} here"
            )
        if (
            device == "cpu"
            and dtype in ("float16", "bfloat16")
            and (read_cpu_features().native_bf16() is None)
        ):
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
    wanted = family.int8_auto or held == INT8
    int8_timing = int8.int8_timing if wanted and int8.supported() else None
    return choose_cpu_dtype(read_cpu_features(), bf16_timing, int8_timing, held)


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
        weight_cache: Path | None = None,
        calibration: Sequence[Sequence[int]] = (),
        held: str | None = None,
    ) -> None:
        """`weight_cache`: a folder for cast weights (weight_cache.py); None: cast at every
        start. `calibration`: token ids of a few fixed texts, run through the float32 model
        when int8 is chosen (outlier channels, accuracy check); empty: neither. `held`: the
        precision the model's collections hold, which dtype "auto" keeps."""
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
        files = weight_files(model_dir)
        checkpoint = MappedCheckpoint.open(files)
        weights, origin = normalise_keys(checkpoint.tensors, checkpoint.origin, family.prefix)
        checkpoint.tensors = {}  # the model takes ownership of what it keeps
        check_weights(weights, origin, expected, model_dir)
        memo = None
        if dtype == "auto" and held is None and device == "cpu" and weight_cache is not None:
            memo = AutoChoice(weight_cache, files, auto_inputs(family))
        remembered = memo.read() if memo is not None else None
        if memo is not None and remembered is not None:
            choice = DtypeChoice(
                remembered[0], f"{remembered[1]} [chosen at an earlier start: {memo.path}]"
            )
        else:
            choice = pick_dtype(dtype, device, model_type, family, dtype_source, held)
        picked = choice
        compute = _DTYPES[choice.dtype]
        # The weights a CPU start would cast: from the cache when it holds them, else cast now
        # and cached once serving (`optimize`).
        self._to_cache: tuple[WeightCache, list[str], str] | None = None
        cast = [k for k, t in weights.items() if cast_on_cpu(k, t, compute, family)]
        if weight_cache is not None and self.device.type == "cpu" and cast:
            cache = WeightCache(weight_cache, files, compute)
            cached = cache.valid()
            if cached is not None:
                stored = checkpoint.adopt(MappedCheckpoint.open([cached]))
                if set(stored) == set(cast) and all(
                    stored[k].shape == weights[k].shape for k in cast
                ):
                    weights.update(stored)
                    origin.update(dict.fromkeys(stored, cached))
                    log.info("torch: %d cast weights mapped from %s", len(stored), cached)
                else:
                    self._to_cache = (cache, cast, family.prefix)
            else:
                self._to_cache = (cache, cast, family.prefix)
        place = Placement(self.device, compute, checkpoint)
        try:
            # The model consumes `weights`, placing each (a no-op when already right).
            self.model: TorchModel | None = family.build(cfg, weights, config_path, place)
        except KeyError as e:
            raise ModelError(f"{config_path}: missing config key {e}") from e
        except (RuntimeError, AssertionError) as e:  # AssertionError: torch built without CUDA
            raise BackendError(f"cannot place the weights on torch device {device}: {e}") from e
        # The forward iterates these: with a `pause`, it can stop between two layers.
        self._layers = self.model.layers = Layers(self.model.layers)
        self._int8_to_cache: Int8Weights | None = None  # what `optimize` writes, if anything
        if choice.dtype == "int8":
            choice = self._quantise(
                self.model,
                choice,
                calibration,
                explicit=dtype == "int8" or held == INT8,  # no fallback to float32
                release=checkpoint.release,
                cache=None if weight_cache is None else (weight_cache, files),
                mapped=lambda path: checkpoint.adopt(MappedCheckpoint.open([path])),
            )
        if memo is not None and remembered is None:
            # The pick's reason, or the load check's where it sent int8 back to float32.
            memo.write(
                choice.dtype, picked.reason if choice.dtype == picked.dtype else choice.reason
            )
        # What `optimize` releases pages of; it also keeps the file maps alive.
        self._checkpoint: MappedCheckpoint | None = checkpoint
        self._forwards = Forwards()  # background repacking yields to them
        self._vocab = int(cfg["vocab_size"])
        self._prefix: Any = None  # the model's cached query prefix (qwen3.Prefix), if any
        self._prefix_model: PrefixModel | None = None
        self._prefix_ids = np.zeros(0, dtype=np.int64)
        self.info = BackendInfo(
            backend="torch",
            device=self.device.type,
            dtype="int8" if choice.dtype == "int8" else str(place.dtype).removeprefix("torch."),
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

    def _quantise(
        self,
        model: TorchModel,
        choice: DtypeChoice,
        calibration: Sequence[Sequence[int]],
        *,
        explicit: bool,
        release: Callable[[torch.Tensor], None] = lambda t: None,
        cache: tuple[Path, Sequence[Path]] | None = None,
        mapped: Callable[[Path], dict[str, torch.Tensor]] | None = None,
    ) -> DtypeChoice:
        """Switch the model's matmuls to the int8 scheme, its outlier columns from a calibration
        pass of the float32 model over `calibration`, and compare the int8 vectors of those rows
        with float32's. Chosen by "auto", int8 is undone (float32 kept) when they are further
        apart than INT8_MIN_COSINE; asked for, it is kept and the figure reported, and the
        float32 weights' pages dropped (`release`). Projections (q/k/v, gate/up) still separate
        (mapped from the cast-weight cache, not copied) are stacked first: one int8 matmul each.
        `cache` (folder, checkpoint files): where the calibration's outcome is kept for the next
        start (weight_cache.Int8Calibration), and the rounded weights (weight_cache.Int8Weights,
        written by `optimize`; a start that finds them maps them, `mapped`, instead of reading
        the float32 weights to round them again)."""
        started = time.perf_counter()
        projections: list[Any] = getattr(model, "projections", list)()
        threads = torch.get_num_threads()
        rows = [list(r) for r in calibration if len(r)]
        # Stacked by shape first: the float weights are read only if they are to be rounded.
        replaced = [(p, p.stack(shape_only=True)) for p in projections]
        linears = cast(Any, model).linears()
        shapes = [list(lin.weight.shape) for lin in linears]
        scheme = [int8.OUTLIER_COLUMNS, int8.SCHEME]
        weights_key = [scheme, int8.LAYOUT, shapes]  # the kept int8 weights' inputs
        record = known = stored = path = None
        if cache is not None and rows:
            record = Int8Calibration(cache[0], cache[1], [rows, scheme, shapes])
            known = record.read()
        usable = known is not None and (explicit or known[1] >= INT8_MIN_COSINE)
        if known is not None and usable and cache is not None and mapped is not None:
            # (Not where the load would go back to float32: that needs the float weights.)
            stored = Int8Weights(cache[0], cache[1], weights_key, known[0])
            path = stored.valid()
        if (
            path is None
            or mapped is None
            or known is None
            or not int8.load_all(linears, mapped(path), known[0])
        ):
            for projection, weights in replaced:
                if weights:
                    projection.parts[0][0].weight = torch.cat(weights)
            path = None
        for _, weights in replaced:
            for weight in weights or ():
                release(weight)
        if not rows:
            int8.quantise_all(linears, threads=threads)
            int8.release_all(linears, release)
            return DtypeChoice("int8", f"{choice.reason} (no calibration: no outlier channels)")
        if known is not None and len(known[0]) == len(linears):
            columns, cosine = known
            how = "measured at an earlier start"
            if path is not None:
                how += "; its int8 weights mapped"
            else:
                int8.quantise_all(linears, columns, threads)
                self._int8_to_cache = stored
        else:
            side = self.recipe.padding_side
            batch = pad(rows, pad_id=self.recipe.pad_token_id, side=side, bucket=False)
            int8.observe(linears)  # quantise_all reads and clears what the pass records
            reference = self._calibration_vectors(model, batch)
            int8.quantise_all(linears, threads=threads)
            got = self._calibration_vectors(model, batch)
            cosine = min_cosine(got, reference)
            if record is not None and cache is not None:
                columns = int8.columns_of(linears)
                record.write(columns, cosine)
                self._int8_to_cache = Int8Weights(cache[0], cache[1], weights_key, columns)
            how = f"calibrated in {time.perf_counter() - started:.1f}s"
        if not explicit and cosine < INT8_MIN_COSINE:
            for lin in linears:
                lin.int8 = None
            self._int8_to_cache = None
            return int8_inaccurate(choice, cosine)
        int8.release_all(linears, release)
        return DtypeChoice(
            "int8",
            f"{choice.reason}; min cosine {cosine:.5f} to float32 on {len(rows)} calibration "
            f"texts ({how})",
        )

    def _calibration_vectors(self, model: TorchModel, batch: Batch) -> np.ndarray:
        real = batch.attention_mask != 0
        with torch.inference_mode():
            return self._forward(model, batch.input_ids, real)

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
        with self._forwards.running():
            return self._embed(model, ids_np, mask_np, pause)

    def _embed(
        self, model: TorchModel, ids_np: np.ndarray, mask_np: np.ndarray, pause: Pause | None
    ) -> np.ndarray:
        b, t = ids_np.shape
        layers = self._layers
        outer = layers.pause  # set: this is a pass run from inside another's pause
        layers.pause = pause if outer is None else None
        try:
            real = mask_np != 0
            hits = self._prefixed_rows(ids_np, real)
            with torch.inference_mode():
                if hits is None:
                    out = self._forward(model, ids_np, real)
                else:
                    out = np.empty((b, self.info.dim), dtype=np.float32)
                    out[hits] = self._forward_after_prefix(model, ids_np[hits], real[hits])
                    rest = ~hits
                    if rest.any():
                        out[rest] = self._forward(model, *trim_padding(ids_np[rest], real[rest]))
        finally:
            layers.pause = outer
        bad = np.flatnonzero(~np.isfinite(out).all(axis=1))
        if bad.size:
            raise BackendError(
                f"torch produced non-finite vectors for batch rows {bad.tolist()} "
                f"(batch shape {b}x{t}, {self.info.device} {self.info.dtype})"
            )
        return out

    def _forward(self, model: TorchModel, ids_np: np.ndarray, real: np.ndarray) -> np.ndarray:
        ids = torch.from_numpy(np.ascontiguousarray(ids_np, dtype=np.int64)).to(self.device)
        mask = torch.from_numpy(np.ascontiguousarray(real)).to(self.device)
        # No padding at all (common: batches are length-sorted): no mask, faster kernels.
        hidden = model.forward(ids, None if bool(real.all()) else mask, explicit=self.explicit)
        return pool(hidden, mask, self.recipe.pooling).float().cpu().numpy()

    def optimize(self) -> int:
        """Repack the bfloat16 CPU weights for oneDNN (layers.Linear): 1.3-1.8x faster short
        queries. Meant for a background thread once the daemon serves: the new layout is fresh
        memory, and first-touching 0.84 GB of it costs ~1 s of CPU on this project's VMs, too
        much for the cold start. Forwards running meanwhile read each weight in whichever form
        it has at that moment: the same numbers. Returns how many weights were repacked (int8's
        weights are rounded at load: none)."""
        self._write_weight_cache()
        self._write_int8_cache()
        model, checkpoint = self.model, self._checkpoint
        linears = getattr(model, "linears", None)
        if model is None or checkpoint is None or linears is None or self.device.type != "cpu":
            return 0
        started = time.perf_counter()
        if self.info.dtype == "bfloat16":
            stacks: list[Stackable] = getattr(model, "projections", list)()
            packed = prepack(linears(), checkpoint.release, self._forwards.wait_idle, stacks=stacks)
            what = "weights repacked for oneDNN"
        else:
            return 0
        if packed:
            # The packed path's kernels for a short query's shape, before a request needs them.
            self._forwards.wait_idle()
            with torch.inference_mode():
                row = [int(t) for t in self._prefix_ids] or [0]
                ids = np.asarray([row + [0, 1, 2]], dtype=np.int64)
                self.embed(Batch(ids, np.ones_like(ids)))
            log.info("torch: %d %s in %.2fs", packed, what, time.perf_counter() - started)
        return packed

    def _write_int8_cache(self) -> None:
        """Write the rounded int8 weights for the next start (weight_cache.Int8Weights), in a
        gap between forward passes; a failure costs the next start its rounding, nothing else."""
        todo, self._int8_to_cache = self._int8_to_cache, None
        linears = getattr(self.model, "linears", None)
        if todo is None or linears is None:
            return
        started = time.perf_counter()
        try:
            written = todo.write(int8.tensors_of(linears()), wait=self._forwards.wait_idle)
        except BackgroundStopped:
            raise
        except Exception as exc:
            log.warning("torch: int8 weights not cached (%s): the next start rounds them", exc)
            return
        if written:
            log.info(
                "torch: int8 weights cached in %.1fs (%d MB): %s",
                time.perf_counter() - started,
                written >> 20,
                todo.path,
            )

    def _write_weight_cache(self) -> None:
        """Cast the weights this start cast (from a fresh map of the checkpoint, one tensor at
        a time, each in a gap between forward passes) into the cache file, for the next start.
        A failure costs the next start its speed, never this one its service."""
        todo, self._to_cache = self._to_cache, None
        if todo is None or self.model is None:
            return
        cache, names, prefix = todo
        started = time.perf_counter()
        try:
            source = MappedCheckpoint.open(cache.files)
            tensors, _ = normalise_keys(source.tensors, source.origin, prefix)
            written = cache.write(((k, tensors[k]) for k in names), wait=self._forwards.wait_idle)
        except BackgroundStopped:
            raise
        except Exception as exc:
            log.warning("torch: cast weights not cached (%s): the next start casts them again", exc)
            return
        if written:
            log.info(
                "torch: %d cast weights (%d MB) cached in %s in %.1f s for the next start",
                len(names),
                written >> 20,
                cache.path,
                time.perf_counter() - started,
            )

    # ------------------------------------------------------------------------- query prefix

    def cache_prefix(self, ids: Sequence[int]) -> bool:
        """Compute once the keys and values of a prefix many inputs start with (the default
        query instruction: ~20 of a short query's ~30 tokens). Rows that start with it then run
        only their own tokens. Decoder families only; False when not cached."""
        model = self.model
        if model is None or not hasattr(model, "prefill") or len(ids) < 2:
            return False
        prefixed = cast(PrefixModel, model)
        self._forwards.wait_idle()  # in the background while serving: in a gap between passes
        with self._forwards.running(), torch.inference_mode():
            prefix = prefixed.prefill(list(ids))
        # Published last: a forward on the model thread sees either no prefix or all of it.
        self._prefix_model = prefixed
        self._prefix_ids = np.asarray(ids, dtype=np.int64)
        self._prefix = prefix
        return True

    def wait_idle(self) -> None:
        """Return once no forward pass is running (background work starts in a gap);
        BackgroundStopped once `stop_background` was called."""
        self._forwards.wait_idle()

    def stop_background(self) -> None:
        """End background work (optimize) at its next step: the daemon is closing."""
        self._forwards.stop()

    def _prefixed_rows(self, ids_np: np.ndarray, real: np.ndarray) -> np.ndarray | None:
        """A boolean row mask of the rows that start with the cached prefix and have tokens of
        their own after it; None when there is no prefix or no such row."""
        if self._prefix is None:
            return None
        p = len(self._prefix_ids)
        hits = np.zeros(len(ids_np), dtype=bool)
        for r in range(len(ids_np)):
            own = ids_np[r][real[r]]
            hits[r] = len(own) > p and bool((own[:p] == self._prefix_ids).all())
        return hits if hits.any() else None

    def _forward_after_prefix(
        self, model: TorchModel, ids_np: np.ndarray, real: np.ndarray
    ) -> np.ndarray:
        """The rows' tokens after the prefix, right-padded, attending to the cached prefix."""
        p = len(self._prefix_ids)
        rows = [ids_np[r][real[r]][p:] for r in range(len(ids_np))]
        t = max(len(x) for x in rows)
        suffix = np.full((len(rows), t), int(self._prefix_ids[-1]), dtype=np.int64)
        own = np.zeros((len(rows), t), dtype=bool)
        for r, x in enumerate(rows):
            suffix[r, : len(x)], own[r, : len(x)] = x, True
        ids = torch.from_numpy(suffix).to(self.device)
        mask = torch.from_numpy(own).to(self.device)
        prefixed = self._prefix_model
        assert prefixed is not None and prefixed is model
        hidden = prefixed.forward(
            ids,
            None if bool(own.all()) else mask,
            explicit=self.explicit,
            prefix=self._prefix,
        )
        return pool(hidden, mask, self.recipe.pooling).float().cpu().numpy()

    def clear_cache(self) -> None:
        if self.device.type == "mps":
            torch.mps.empty_cache()
        elif self.device.type == "cuda":
            torch.cuda.empty_cache()

    def close(self) -> None:
        self.model = self._checkpoint = None
        self._prefix = self._prefix_model = None
        self.clear_cache()


class Forwards:
    """Whether a forward pass is running, for background work (repacking) to wait for a gap."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0
        self._idle = threading.Event()
        self._idle.set()
        self._stopped = False

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        with self._lock:
            self._running += 1
            self._idle.clear()
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1
                if not self._running:
                    self._idle.set()

    def wait_idle(self) -> None:
        """Return once no forward pass runs; BackgroundStopped once `stop` was called (the
        daemon is closing: background work ends at its next step)."""
        self._idle.wait()
        if self._stopped:
            raise BackgroundStopped

    def stop(self) -> None:
        self._stopped = True


def trim_padding(ids: np.ndarray, real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop the columns that are padding in every row (a sub-batch of a wider batch)."""
    used = real.any(axis=0)
    if used.all():
        return ids, real
    cols = np.flatnonzero(used)
    return ids[:, cols[0] : cols[-1] + 1], real[:, cols[0] : cols[-1] + 1]


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


def cast_on_cpu(name: str, t: torch.Tensor, compute: torch.dtype, family: Family) -> bool:
    """Whether the CPU forward casts this stored weight to the compute dtype at load."""
    return t.is_floating_point() and t.dtype != compute and name not in family.kept_as_stored


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
