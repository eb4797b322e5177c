"""What the torch families share: the model contract the embedder relies on, attention, packing
of real tokens, RMSNorm, RoPE.

Masks are boolean and every query may attend to itself, so left-padded rows never go NaN. For
speed on CPU, token-wise work runs on the real tokens only (`Packing`), so padding costs
attention time and nothing else.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from localrank.engine.batching import bucket_rows

# Weight name -> the shape config.json implies for it (what the loader checks).
Shapes = dict[str, tuple[int, ...]]
# SDPA's enable_gqa (torch >= 2.5) shares k/v heads without copying them; older: repeat them.
_SDPA_GQA = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)


class TorchModel(Protocol):
    """A family's forward, built from checked weights: what the embedder runs and pools.

    `forward` runs its layers by iterating `layers` once, in order: the embedder replaces the
    list with `Layers`, which can pause between two of them (the scheduler's preemption).
    """

    causal: bool
    max_positions: int | None
    layers: list[Any]

    def forward(self, ids: Tensor, real: Tensor | None, *, explicit: bool) -> Tensor:
        """Last hidden states [B, T, H] for ids [B, T]; `real`: bool [B, T], None if unpadded."""
        ...


class Layers(list[Any]):
    """A model's layers. Iterating them calls `pause` (when set) between two layers. The pause
    belongs to the thread that set it: a forward run meanwhile on another thread (the
    background repacking's warm-up) never calls the model thread's pause."""

    def __init__(self, layers: Any) -> None:
        super().__init__(layers)
        self._local = threading.local()

    @property
    def pause(self) -> Callable[[], None] | None:
        return getattr(self._local, "pause", None)

    @pause.setter
    def pause(self, value: Callable[[], None] | None) -> None:
        self._local.pause = value

    def __iter__(self) -> Iterator[Any]:
        pause = self.pause
        for i, layer in enumerate(super().__iter__()):
            if i and pause is not None:
                pause()
            yield layer


class PrefixModel(Protocol):
    """A decoder that can cache a shared prefix's keys and values and continue from it."""

    def prefill(self, ids: list[int]) -> Any:
        """The cached state for `ids` (one unpadded row)."""
        ...

    def forward(
        self, ids: Tensor, real: Tensor | None, *, explicit: bool, prefix: Any = None
    ) -> Tensor:
        """As TorchModel.forward; with `prefix`, rows hold only the tokens after it."""
        ...


# A forward over at most this many tokens runs its element-wise work on the calling thread alone.
SMALL_PASS_ROWS = 64
# In such a pass, a matmul of at most this many multiply-adds (rows x in x out) runs there too.
SMALL_MATMUL = 1 << 22


class _Pool(threading.local):
    threads = 0  # the thread pool's size while this thread runs a small pass; 0 otherwise


_pool = _Pool()
_intra = [0]  # the engine's intra-op threads (cpu.configure_threads); 0: torch's own count


def set_intra_threads(n: int) -> None:
    _intra[0] = n


def claim_threads() -> None:
    """Give the calling thread the engine's intra-op thread count. torch keeps the count per
    thread, and a thread takes, at its first op, the count some thread set last: the daemon's
    model thread, first used while the background repack was inside a small pass (which holds
    its own thread to one), ran every later forward on one core (a query 116 -> 89 ms, bulk
    at half speed, depending on when the first request came). Called where a forward starts."""
    n = _intra[0]
    if n and not _pool.threads and torch.get_num_threads() != n:
        torch.set_num_threads(n)


@contextmanager
def small_pass(rows: int) -> Iterator[None]:
    """Run a forward over `rows` tokens with torch's thread pool for its larger matmuls only,
    when `rows` is small (a short query). A short query's norms, RoPE and SiLU (16-48k values,
    just above torch's grain size) make ~20 parallel regions a layer, each handing a few
    microseconds of work to a pool thread. When the pool's threads slept at once, each wake-up
    cost more than it saved (one instructed query to the Qwen3-0.6B shape in bfloat16 on 2
    cores: 153 -> 125 ms; all-MiniLM-L6-v2: 11.7 -> 9.2 ms). Now that they spin briefly
    (engine/load.py), the pool would win on a quiet machine (82 vs 91 ms), but lose badly when
    another process keeps a core busy (270 vs 158 ms): a short query stays on this thread."""
    claim_threads()
    threads = torch.get_num_threads()
    if rows > SMALL_PASS_ROWS or threads == 1 or _pool.threads:
        yield
        return
    torch.set_num_threads(1)
    _pool.threads = threads
    try:
        yield
    finally:
        _pool.threads = 0
        torch.set_num_threads(threads)


class Linear:
    """A weight for x @ W^T (+ b). `packed`, when set, is the same weight in oneDNN's blocked
    layout: a bfloat16 matmul against it skips the reorder oneDNN otherwise does on every call
    (measured: 1.7-1.8x for a short query's ~12 rows, 1.05x for 2k-token batches). `int8`, when
    set, computes the product instead (int8.Int8Weight). `seen`, while a calibration pass runs,
    collects the max |x| of each input channel (int8.observe)."""

    __slots__ = ("weight", "macs", "packed", "int8", "seen")

    def __init__(self, weight: Tensor) -> None:
        self.weight = weight
        self.macs = weight.shape[0] * weight.shape[1]  # multiply-adds per input row
        self.packed: Tensor | None = None
        self.int8: Callable[[Tensor, Tensor | None, bool], Tensor] | None = None
        self.seen: Tensor | None = None

    @classmethod
    def packed_only(cls, packed: Tensor, macs: int) -> Linear:
        """A weight that exists in oneDNN's layout only (a stack made while repacking)."""
        lin = cls(torch.empty((0, 0), dtype=torch.bfloat16))
        lin.packed, lin.macs = packed, macs
        return lin

    def __call__(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        seen = self.seen
        if seen is not None:
            torch.maximum(seen, x.detach().abs().amax(0).float(), out=seen)
        # In a small pass, only a large enough matmul goes to the thread pool (small_pass).
        big = bool(_pool.threads) and x.shape[0] * self.macs > SMALL_MATMUL
        int8 = self.int8
        if int8 is not None:
            return int8(x, bias, big)  # its kernel on the pool, its scaling on this thread
        packed = self.packed
        if packed is not None:
            product = partial(torch.ops.mkldnn._linear_pointwise, x, packed, bias, "none", [], "")
        else:
            product = partial(F.linear, x, self.weight, bias)
        return pooled(product) if big else product()


def pooled(fn: Callable[[], Tensor]) -> Tensor:
    """fn() on torch's whole thread pool: inside a small pass, which holds this thread to one
    thread, for its matmul kernels; elsewhere as it is."""
    threads = _pool.threads
    if not threads:
        return fn()
    torch.set_num_threads(threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(1)


def kernel_threads(pool: bool) -> int:
    """Threads for a kernel of localrank's own (int8.py): the engine's inside a small pass when
    `pool` (where `pooled` would give torch's pool), torch's current count otherwise."""
    return _pool.threads if pool and _pool.threads else torch.get_num_threads()


def attention_mask(real: Tensor, *, causal: bool) -> Tensor:
    """Boolean mask (True = may attend): [B, 1, T, T] if causal, else [B, 1, 1, T].

    Causal: each query may always attend to itself, so a left-padding query (which sees no real
    key) never gets an empty softmax row; real queries already see themselves, so they are
    unchanged. Bidirectional: every row has a real token (the backend checks), so keys suffice.
    """
    keys = real[:, None, None, :]
    if not causal:
        return keys
    t = real.shape[1]
    tril = torch.ones(t, t, dtype=torch.bool, device=real.device).tril_()
    return (keys & tril) | torch.eye(t, dtype=torch.bool, device=real.device)


def attend(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, *, causal: bool, explicit: bool
) -> Tensor:
    """softmax(q k^T / sqrt(d)) v for q [B, Hq, T, D] and k, v [B, Hkv, T, D] (Hq % Hkv == 0).

    `mask` None means no padding (plain causal or full attention). `explicit` is matmul +
    float32 softmax, for devices whose SDPA kernels are unreliable (MPS: NaN for Qwen3).
    """
    groups = q.shape[1] // k.shape[1]
    if groups > 1 and (explicit or not _SDPA_GQA):
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    if explicit:
        # Scale q before the product (less fp16 overflow); softmax in float32 as HF's eager.
        scores = ((q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)).float()
        if mask is None and causal:
            t = q.shape[2]
            mask = torch.ones(t, t, dtype=torch.bool, device=q.device).tril_()
        if mask is not None:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        return scores.softmax(dim=-1).to(v.dtype) @ v
    if groups > 1 and _SDPA_GQA:
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal and mask is None, enable_gqa=True
        )
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=causal and mask is None
    )


class Packing:
    """Where the real tokens of a padded [B, T] batch are.

    Token-wise work (projections, MLP, norms: ~90% of the FLOPs) runs on the N real tokens
    packed as [N, D], so padding costs nothing there; only attention sees the padded layout.
    N is rounded up to a few sizes (`bucket_rows`: the extra rows repeat the first token and are
    dropped by `scatter`), so the kernels that are compiled and cached per shape stay few; not
    with `bucket=False`, for a forward with no such kernels (Qwen3 in int8: its matmuls are
    int8.py's, whose cost grows with each row, up to 7 more in 16 for a short query).
    """

    def __init__(self, real: Tensor | None, b: int, t: int, bucket: bool = True) -> None:
        self.b, self.t = b, t
        real_idx = None if real is None else real.flatten().nonzero().squeeze(1)
        self.n = b * t if real_idx is None else int(real_idx.numel())
        self.idx = real_idx
        extra = bucket_rows(self.n) - self.n if bucket else 0
        self.take: Tensor | None = None  # what `gather` selects, when not a plain reshape
        if real_idx is not None or extra:
            device = real.device if real is not None else None
            first = torch.arange(self.n, device=device) if real_idx is None else real_idx
            self.take = torch.cat([first, first[:1].expand(extra)])

    def gather(self, x: Tensor) -> Tensor:
        """[B, T, ...] -> [rows, ...]: the real tokens in row-major order, then fill rows."""
        flat = x.reshape(self.b * self.t, *x.shape[2:])
        return flat if self.take is None else flat.index_select(0, self.take.to(flat.device))

    def columns(self, device: torch.device) -> Tensor:
        """[rows]: each row's column in the padded batch (a token's position, for RoPE)."""
        flat = torch.arange(self.n, device=device) if self.take is None else self.take.to(device)
        return flat % self.t

    def scatter(self, x: Tensor) -> Tensor:
        """[rows, D] -> [B, T, D], zeros at padding."""
        x = x[: self.n]
        if self.idx is None:
            return x.reshape(self.b, self.t, -1)
        out = x.new_zeros(self.b * self.t, x.shape[-1])
        return out.index_copy_(0, self.idx, x).view(self.b, self.t, -1)


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """RMSNorm as Qwen3RMSNorm: statistics in float32, scaled back in the input dtype; `weight`
    is [D] or one per head, [heads, D] (over x [..., heads, D]). For
    float32 on CPU, torch's fused kernel: the same numbers (checked bit for bit against the
    op-by-op form below on the forwards' shapes), one pass instead of six (a query's per-head
    norms over [16 rows, 20 tokens, 16 heads, 128]: 1.8 -> 0.34 ms)."""
    if x.dtype == weight.dtype == torch.float32 and x.device.type == "cpu":
        if weight.dim() > 1:  # a weight per head ([heads, D]): the fused kernel takes one
            return F.rms_norm(x, (x.shape[-1],), None, eps).mul_(weight)
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def signed_sin(sin: Tensor) -> Tensor:
    """RoPE's sin with its first half negated: HF's rotate_half(x) * sin, where rotate_half
    maps [x1, x2] to [-x2, x1], is then roll(x) * signed_sin."""
    half = sin.shape[-1] // 2
    return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


def rope(x: Tensor, cos: Tensor, sin_signed: Tensor) -> Tensor:
    """x * cos + rotate_half(x) * sin, as HF's apply_rotary_pos_emb, in four ops instead of
    six (rotate_half's negation moves into the sin, computed once a pass, and its halves'
    swap is a roll): the same numbers, each product rounded alike."""
    swapped = x.roll(x.shape[-1] // 2, dims=-1)
    return (x * cos).add_(swapped.mul_(sin_signed))
