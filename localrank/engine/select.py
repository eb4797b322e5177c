"""Backend auto-selection: MLX on an Apple GPU, then PyTorch MPS, then CUDA, then CPU.

Probing is separate from choosing so the choice can be unit-tested for machines we do not have
(a Mac with Metal, a CUDA box); what was really loaded is read back by the backend itself.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from localrank.engine.rerank import RerankRecipe
from localrank.engine.types import Embedder, Recipe, Scorer
from localrank.errors import BackendError


@dataclass(frozen=True)
class Probe:
    """What this machine offers. `notes` keeps why a backend is unavailable."""

    mlx: bool = False
    metal: bool = False
    torch: bool = False
    mps: bool = False
    cuda: bool = False
    notes: dict[str, str] = field(default_factory=dict)


def probe_machine() -> Probe:
    """Import the optional backends (lazily: they are heavy) and ask what they can use."""
    notes: dict[str, str] = {}
    mlx = metal = torch_ok = mps = cuda = False
    try:
        mx = importlib.import_module("mlx.core")
        mlx = True
        metal = bool(mx.metal.is_available())
        if not metal:
            notes["metal"] = "MLX is installed but no Metal GPU is present"
    except Exception as exc:  # ImportError, or a broken native library
        notes["mlx"] = f"cannot import mlx: {exc}"
    try:
        torch = importlib.import_module("torch")
        torch_ok = True
        cuda = bool(torch.cuda.is_available())
        mps_backend = getattr(torch.backends, "mps", None)
        mps = bool(mps_backend is not None and mps_backend.is_available())
        if not cuda:
            notes["cuda"] = "torch reports no CUDA device"
        if not mps:
            notes["mps"] = "torch reports no MPS device"
    except Exception as exc:
        notes["torch"] = f"cannot import torch: {exc}"
    return Probe(mlx=mlx, metal=metal, torch=torch_ok, mps=mps, cuda=cuda, notes=notes)


def choose_backend(requested: str, probe: Probe) -> tuple[str, str]:
    """Return (backend, device) for a request of auto|mlx|torch|mps|cuda|cpu, or raise with the
    reason. `torch` is torch on its best device: MPS, then CUDA, then CPU."""
    if requested == "auto":
        if probe.mlx and probe.metal:
            return ("mlx", "gpu")
        if probe.torch and probe.mps:
            return ("torch", "mps")
        if probe.torch and probe.cuda:
            return ("torch", "cuda")
        if probe.torch:
            return ("torch", "cpu")
        if probe.mlx:
            return ("mlx", "cpu")
        raise BackendError("no backend is usable: " + "; ".join(probe.notes.values()))
    if requested == "mlx":
        if not probe.mlx:
            raise BackendError(probe.notes.get("mlx", "mlx is not installed"))
        return ("mlx", "gpu" if probe.metal else "cpu")
    if not probe.torch:
        raise BackendError(f"backend {requested!r} needs torch: {probe.notes.get('torch')}")
    if requested == "torch":
        return ("torch", "mps" if probe.mps else "cuda" if probe.cuda else "cpu")
    if requested in ("mps", "cuda") and not getattr(probe, requested):
        raise BackendError(
            f"backend {requested!r} is not available: {probe.notes.get(requested, 'not present')}"
        )
    if requested in ("mps", "cuda", "cpu"):
        return ("torch", requested)
    raise BackendError(f"unknown backend {requested!r}")


def create_embedder(
    backend: str,
    device: str,
    model_dir: Path,
    recipe: Recipe,
    dtype: str = "auto",
    *,
    threads: int = 0,
    dtype_source: str = "the dtype setting",
    weight_cache: Path | None = None,
    calibration: Sequence[Sequence[int]] = (),
    held: str | None = None,
) -> Embedder:
    """Load the model on the chosen backend. The backend modules are imported only here. A
    family with no native forward (`recipe.family` "generic:...") loads through transformers on
    torch, or mlx-embeddings on MLX, each imported only then. `weight_cache`: where torch keeps
    weights it casts at load, so the next start maps them instead. `calibration`: token ids of
    fixed texts an int8 path calibrates on. `held`: the precision the model's collections hold
    (precision.held_precision), which dtype "auto" keeps."""
    if recipe.family.startswith("generic:") and backend == "mlx":
        mlx_generic = importlib.import_module("localrank.engine.mlx.generic")
        embedder: Embedder = mlx_generic.MLXGenericEmbedder(
            model_dir, recipe, dtype=dtype, device=device
        )
        return embedder
    if recipe.family.startswith("generic:"):
        if backend != "torch":
            raise BackendError(
                f"{recipe.family.removeprefix('generic:')} has no native forward; the generic "
                f"path runs on torch or MLX, not on {backend}"
            )
        generic = importlib.import_module("localrank.engine.torch.generic")
        embedder = generic.GenericTorchEmbedder(
            model_dir, recipe, device=device, dtype=dtype, threads=threads
        )
        return embedder
    if backend == "mlx":
        mlx_package = importlib.import_module("localrank.engine.mlx")
        embedder = mlx_package.MLXEmbedder(
            model_dir,
            recipe,
            dtype=dtype,
            device=device,
            dtype_source=dtype_source,
            calibration=calibration,
            held=held,
        )
        return embedder
    if backend == "torch":
        torch_package = importlib.import_module("localrank.engine.torch")
        embedder = torch_package.TorchEmbedder(
            model_dir,
            recipe,
            device=device,
            dtype=dtype,
            threads=threads,
            dtype_source=dtype_source,
            weight_cache=weight_cache,
            calibration=calibration,
            held=held,
        )
        return embedder
    raise BackendError(f"unknown backend {backend!r}")


def create_scorer(
    backend: str,
    device: str,
    model_dir: Path,
    recipe: RerankRecipe,
    dtype: str = "auto",
    *,
    threads: int = 0,
) -> Scorer:
    """Load a cross-encoder on the chosen backend (imported only here, as for embedders)."""
    if backend == "mlx":
        mlx_package = importlib.import_module("localrank.engine.mlx")
        scorer: Scorer = mlx_package.MLXScorer(model_dir, recipe, dtype=dtype, device=device)
        return scorer
    if backend == "torch":
        torch_package = importlib.import_module("localrank.engine.torch")
        scorer = torch_package.TorchScorer(
            model_dir, recipe, device=device, dtype=dtype, threads=threads
        )
        return scorer
    raise BackendError(f"unknown backend {backend!r}")
