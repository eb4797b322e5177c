"""Converted weights kept on disk, so the next start maps them instead of converting again.

A checkpoint stored in bfloat16 (Qwen3-Embedding's) served in float32 (CPUs without native
bfloat16) is cast at every start: 2.4 GB of fresh memory for the 0.6B model, written through a
page fault every 4 KB, about a second of a 2-core laptop's start. Once the daemon serves, it
writes the cast weights to one safetensors file under the user's cache directory
(`<cache>/weights/`); the next start maps that file as it maps the checkpoint, and a tensor
already in the compute dtype is used where it lies: nothing is converted.

A cache file is named after the model folder and the compute dtype, and records in its header
what it was made from (each source file's path, size and modification time): a changed
checkpoint makes it stale, and it is then ignored and rewritten. It holds only the tensors the
model would convert, by their checkpoint names, so it is read exactly as the checkpoint is.

Beside them, `Int8Calibration` keeps what an int8 load measured on the fixed calibration texts
(each matmul's outlier columns, the min cosine to float32), so the next start skips both
calibration passes (2.7 s of the 0.6B shape's start on 2 cores), and `AutoChoice` keeps the
dtype "auto" chose for the model on this machine, so that every later start serves the same
one (the probes near a threshold could otherwise choose differently from one start to the next:
int8 1.8x, then 1.12x, then 1.47x on three starts held to AVX2, against 1.5x).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor

from localrank.engine.model_files import safetensors_index

log = logging.getLogger(__name__)
T = TypeVar("T")

FORMAT = 1
SAFETENSORS_DTYPES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int8: "I8",
}
_ALIGN = 8  # tensor data offsets are kept 8-byte aligned, so every view maps without a copy


def source_key(files: Sequence[Path], dtype: torch.dtype) -> str:
    """What a cache file was made from: the checkpoint files as they are now, and the dtype."""
    parts: list[object] = [FORMAT, str(dtype)]
    for f in files:
        st = f.stat()
        parts.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def model_name(files: Sequence[Path]) -> str:
    """The start of a cache file's name: the model folder's resolved path, hashed."""
    return hashlib.sha256(str(Path(files[0]).parent.resolve()).encode()).hexdigest()[:16]


@contextlib.contextmanager
def replaced(path: Path) -> Iterator[Path]:
    """A temporary file beside `path` to write, renamed onto it when the block ends without an
    error, removed otherwise: a reader sees the old file or the whole new one."""
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


class WeightCache:
    """The cache file for one model folder's checkpoint in one compute dtype."""

    def __init__(self, folder: Path, files: Sequence[Path], dtype: torch.dtype) -> None:
        self.files = list(files)
        self.dtype = dtype
        dtype_name = str(dtype).removeprefix("torch.")
        self.path = folder / f"{model_name(self.files)}-{dtype_name}.safetensors"
        self.key = source_key(self.files, dtype)

    def write(
        self,
        tensors: Iterable[tuple[str, Tensor]],
        *,
        wait: Callable[[], object] = lambda: None,
    ) -> int:
        """Write `tensors` (name, tensor in the compute dtype; each produced when asked for, so
        at most one is in memory at a time) to the cache file, atomically (a temporary file
        renamed into place). `wait` is called before each tensor (the daemon: a gap between
        forward passes). Returns the bytes written; 0 when there was not room for it."""
        return write_safetensors(self.path, self.key, tensors, self.dtype, wait)

    def valid(self) -> Path | None:
        """The cache file, if it exists and was made from the checkpoint as it is now."""
        return valid_file(self.path, self.key)


class Int8Weights:
    """The integer weights an int8 load rounded (each linear's blocks, scales and outlier
    columns), for the next start to map instead of reading the float32 weights and rounding them
    again: the 0.6B shape's start reads 0.52 GB instead of 1.76 GB. Valid for the checkpoint as
    it is now, `inputs` (the scheme, the linears' shapes) and the outlier `columns` they were
    rounded with."""

    def __init__(
        self, folder: Path, files: Sequence[Path], inputs: object, columns: Sequence[Tensor | None]
    ) -> None:
        self.path = folder / f"{model_name(files)}-int8.safetensors"
        self.key = record_key(files, torch.int8, [inputs, column_lists(columns)])

    def valid(self) -> Path | None:
        return valid_file(self.path, self.key)

    def write(
        self, tensors: Iterable[tuple[str, Tensor]], wait: Callable[[], object] = lambda: None
    ) -> int:
        return write_safetensors(self.path, self.key, tensors, None, wait)


def record_key(files: Sequence[Path], dtype: torch.dtype, inputs: object) -> str:
    """What a record or cache file was made from: the checkpoint as it is now, and `inputs`."""
    return hashlib.sha256(json.dumps([source_key(files, dtype), inputs]).encode()).hexdigest()


def column_lists(columns: Sequence[Tensor | None]) -> list[list[int] | None]:
    """Each linear's outlier columns as plain lists (None: none), as records keep them."""
    return [None if c is None else c.tolist() for c in columns]


def valid_file(path: Path, key: str) -> Path | None:
    """`path`, if it exists, is well-formed and records `key` as what it was made from."""
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        if header.get("__metadata__", {}).get("localrank_source") != key:
            return None
        safetensors_index(path)  # well-formed, or it is not used
    except Exception as exc:  # any unreadable cache is simply not used
        log.info("weight cache %s not used: %s", path, exc)
        return None
    return path


def write_safetensors(
    path: Path,
    key: str,
    tensors: Iterable[tuple[str, Tensor]],
    dtype: torch.dtype | None,
    wait: Callable[[], object],
) -> int:
    """Write `tensors` to `path` as safetensors with `key` in its metadata, each converted to
    `dtype` (None: as they are), atomically, one after another (a tensor's data stays aligned
    to its item size where every size before it is a multiple of it: int8 blocks of 32, then
    float32). Returns the bytes written; 0 when there was not room for it."""
    items = list(tensors)  # (name, lazy tensor): shapes are known without converting
    header: dict[str, object] = {"__metadata__": {"localrank_source": key}}
    offset = 0
    for name, t in items:
        kind = t.dtype if dtype is None else dtype
        nbytes = t.numel() * torch.empty((), dtype=kind).element_size()
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[kind],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % _ALIGN)
    path.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(path.parent).free
    if free < 2 * (offset + len(raw)):
        log.info("weight cache not written: %d MB free in %s", free >> 20, path.parent)
        return 0
    with replaced(path) as tmp, open(tmp, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for _, t in items:
            wait()
            data = (t if dtype is None else t.to(dtype)).contiguous()
            f.write(data.view(torch.uint8).numpy().tobytes())
    return 8 + len(raw) + offset


class _Record:
    """A small JSON record beside the cache files, valid for one model folder's checkpoint as
    it is now and `inputs` (whatever else its content depends on)."""

    suffix = "record"
    what = "record"  # as log lines name it

    def __init__(self, folder: Path, files: Sequence[Path], inputs: object) -> None:
        self.path = folder / f"{model_name(files)}-{self.suffix}.json"
        self.key = record_key(files, torch.float32, inputs)

    def _read(self, parse: Callable[[dict[str, Any]], T]) -> T | None:
        """`parse(record)`, or None when the record is absent, stale or unreadable."""
        try:
            record = json.loads(self.path.read_text())
            if record.get("key") != self.key:
                return None
            return parse(record)
        except FileNotFoundError:
            return None
        except Exception as exc:  # any unreadable record is simply not used
            log.info("%s %s not used: %s", self.what, self.path, exc)
            return None

    def _write(self, fields: dict[str, Any]) -> None:
        """Write atomically; a failure costs the next start what the record saves, nothing
        else."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with replaced(self.path) as tmp:
                tmp.write_text(json.dumps({"key": self.key, **fields}, separators=(",", ":")))
        except OSError as exc:
            log.info("%s not kept (%s): the next start measures again", self.what, exc)


class Int8Calibration(_Record):
    """One model folder's int8 calibration: each linear's outlier input columns (None: none) and
    the calibration texts' min cosine to float32, valid for the checkpoint as it is now and
    `inputs` (the calibration token ids, the scheme's constants, the linears' shapes)."""

    suffix = "int8-calibration"
    what = "int8 calibration"

    def read(self) -> tuple[list[Tensor | None], float] | None:
        """(columns per linear, min cosine), or None when absent, stale or unreadable."""

        def parse(record: dict[str, Any]) -> tuple[list[Tensor | None], float]:
            columns = [
                None if c is None else torch.tensor(c, dtype=torch.long) for c in record["columns"]
            ]
            return columns, float(record["cosine"])

        return self._read(parse)

    def write(self, columns: Sequence[Tensor | None], cosine: float) -> None:
        self._write({"cosine": cosine, "columns": column_lists(columns)})


class AutoChoice(_Record):
    """The dtype "auto" chose for one model folder on this machine, and why: valid for the
    checkpoint as it is now and `inputs` (what else decided it: the CPU, torch, the rules'
    thresholds)."""

    suffix = "auto-dtype"
    what = "auto dtype record"

    def read(self) -> tuple[str, str] | None:
        """(dtype, reason), or None when absent, stale or unreadable."""
        return self._read(lambda record: (str(record["dtype"]), str(record["reason"])))

    def write(self, dtype: str, reason: str) -> None:
        self._write({"dtype": dtype, "reason": reason})
