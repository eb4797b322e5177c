"""Checkpoint tensors without copies: every tensor is a view of a private memory map of its
safetensors file, so nothing is read until a forward pass (or a cast) touches it, and a tensor
already in its final dtype is used where it lies.

A weight that must be converted (cast, stacked with others, moved to an accelerator) is read
once into its final form by `Placement`, which then drops the mapped pages it came from, so the
process never holds a checkpoint twice.
"""

from __future__ import annotations

import mmap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from localrank.engine.model_files import safetensors_index
from localrank.errors import ModelError

TORCH_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_PAGE = mmap.PAGESIZE


@dataclass
class MappedCheckpoint:
    """The tensors of a (possibly sharded) checkpoint, as views of read-only-in-practice private
    maps (MAP_PRIVATE: writable for torch, never written back)."""

    tensors: dict[str, Tensor] = field(default_factory=dict)
    origin: dict[str, Path] = field(default_factory=dict)
    # data_ptr of each mapped tensor -> (its map, first byte, end byte): what `release` drops.
    _ranges: dict[int, tuple[mmap.mmap, int, int]] = field(default_factory=dict)

    @classmethod
    def open(cls, files: Sequence[Path]) -> MappedCheckpoint:
        ckpt = cls()
        for f in files:
            index = safetensors_index(f)
            try:
                with open(f, "rb") as fh:
                    mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
            except (OSError, ValueError) as e:
                raise ModelError(f"{f}: cannot map safetensors file: {e}") from e
            for name, st in index.items():
                dtype = TORCH_DTYPES.get(st.dtype)
                if dtype is None:
                    raise ModelError(f"{f}: tensor {name!r} has unsupported dtype {st.dtype}")
                ckpt.tensors[name] = ckpt._view(mapped, dtype, st.shape, st.start, st.end, f, name)
                ckpt.origin[name] = f
        return ckpt

    def _view(
        self,
        mapped: mmap.mmap,
        dtype: torch.dtype,
        shape: tuple[int, ...],
        start: int,
        end: int,
        f: Path,
        name: str,
    ) -> Tensor:
        itemsize = torch.empty((), dtype=dtype).element_size()
        count = 1
        for d in shape:
            count *= d
        if count * itemsize != end - start:
            raise ModelError(
                f"{f}: tensor {name!r} has {end - start} bytes, its shape {shape} needs "
                f"{count * itemsize}"
            )
        if count == 0:
            return torch.empty(shape, dtype=dtype)
        if start % itemsize:
            # Misaligned (mixed dtypes packed tightly): a copy, which is rare and small.
            data = bytearray(mapped[start:end])
            return torch.frombuffer(data, dtype=dtype, count=count).view(shape)
        t = torch.frombuffer(mapped, dtype=dtype, count=count, offset=start).view(shape)
        self._ranges[t.data_ptr()] = (mapped, start, end)
        return t

    def adopt(self, other: MappedCheckpoint) -> dict[str, Tensor]:
        """Take over `other`'s maps (their pages are released as this checkpoint's are) and
        return its tensors."""
        self._ranges.update(other._ranges)
        other._ranges = {}
        tensors, other.tensors = other.tensors, {}
        return tensors

    def release(self, t: Tensor) -> None:
        """`t`'s contents now live elsewhere: drop its pages from this process's memory (the
        file stays in the OS page cache). A later read would fault them back in, unchanged."""
        entry = self._ranges.pop(t.data_ptr(), None)
        if entry is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        mapped, start, end = entry
        first = -(-start // _PAGE) * _PAGE  # whole pages only: neighbours may still be in use
        last = end // _PAGE * _PAGE
        if last > first:
            mapped.madvise(mmap.MADV_DONTNEED, first, last - first)


@dataclass(frozen=True)
class Placement:
    """Where the weights go and in which dtype. Conversions read each mapped tensor once and
    release its pages; tensors already right stay where they are mapped."""

    device: torch.device
    dtype: torch.dtype
    checkpoint: MappedCheckpoint | None = None

    def needs_copy(self, t: Tensor, dtype: torch.dtype | None = None) -> bool:
        return t.dtype != (dtype or self.dtype) or t.device != self.device

    def put(self, t: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """`t` on the device in `dtype` (the compute dtype by default)."""
        out = t.to(device=self.device, dtype=dtype or self.dtype)
        if out.data_ptr() != t.data_ptr() and self.checkpoint is not None:
            self.checkpoint.release(t)
        return out

    def stack(self, parts: Sequence[Tensor]) -> Tensor:
        """The parts concatenated along dim 0, cast while copying (one pass, no temporary)."""
        rows = sum(p.shape[0] for p in parts)
        out = torch.empty((rows, *parts[0].shape[1:]), dtype=self.dtype, device=self.device)
        at = 0
        for p in parts:
            out[at : at + p.shape[0]].copy_(p)
            at += p.shape[0]
            if self.checkpoint is not None:
                self.checkpoint.release(p)
        return out
