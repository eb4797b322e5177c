"""Candidate generation: binary codes of every chunk vector, scanned in memory with numpy.

Earlier measurements on the 2-core Linux box (1024-d, k=400 candidates): sqlite-vec `vec0`
with `bit[1024]` takes 100-150 ms at 200k rows (~500+ ms at 1M); `vec_distance_hamming` over a
plain table ~140 ms at 1M; numpy over a `uint64 [N, 16]` code matrix ~50-90 ms at 1M. So the
index is an in-memory code matrix per collection, searched in three stages that each look at
fewer rows with more bits:

1. coarse: Hamming distance on the first 256 bits of every row (`COARSE_WORDS` uint64 words),
   held column by column (`[4, N]`), keeps max(25 k, 10000) rows. The column layout matters
   more than the bit count: numpy's XOR + `bitwise_count` + add over contiguous columns runs
   ~8 ms per 1M rows here, where the same 256 bits as rows of a `[N, 4]` matrix (a reduction
   along a short axis) took ~45 ms, and all 1024 bits as rows ~85 ms. The first bits suit
   Matryoshka-trained models such as Qwen3-Embedding (the leading dimensions carry the most),
   and cost nothing to derive: they are a prefix of the stored code;
2. Hamming distance on all the bits of that shortlist keeps max(5 k, 2000) rows;
3. asymmetric: the float query against those rows' bits (byte lookup tables) keeps k.
Callers then rescore the k exactly against the float32 vectors. On search_bench's clustered
data (1M x 1024-d, 2000 clusters) recall@10 stays 1.00 at k=400; see bench/search_bench.py.
Collections of at most 256 bits per code skip stage 2 (stage 1 already sees every bit).

Metadata filters become a mask over the rows inside stage 1, so a filter never starves the
top-k. The index is kept current incrementally: new chunks have larger ids (AUTOINCREMENT) and
are appended to column buffers shared by successive snapshots (with a quarter to spare, so an
append costs the new rows, not a copy of the matrix); deleted ones are listed in `tombstones`
with the generation that deleted them and masked out until a quarter of the rows are dead, when
the snapshot is repacked. A change of `epoch` (reindex, compact) reloads it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace

import numpy as np

COARSE_WORDS = 4  # stage 1 looks at the first 4 x 64 bits of each code
SCAN_BLOCK_ROWS = 65_536  # stage-1 block: its temporaries (512 KB each) stay in cache
REPACK_DEAD_FRACTION = 0.25  # dead rows at which a snapshot drops them instead of masking
_MASKED = np.iinfo(np.uint16).max  # stage-1 distance of a row the filter excludes
# _BYTE_BITS[b, i] is bit i (little-endian) of byte value b.
_BYTE_BITS = ((np.arange(256)[:, None] >> np.arange(8)) & 1).astype(np.float32)


@dataclass(frozen=True)
class Stages:
    """How many rows the first two stages keep for k candidates (see the module docstring).

    Measured at 1M rows, k=400: a stage-1 shortlist of 2,000 to 20,000 rows gives the same
    recall (1.00; the asymmetric stage limits it at small k, not stage 1), so 10,000 is a
    margin that costs ~1 ms. 128 bits instead of 256 lost recall (0.96-0.99).
    """

    coarse_factor: int = 25
    min_coarse: int = 10_000
    shortlist_factor: int = 5
    min_shortlist: int = 2000

    def sizes(self, k: int, rows: int, whole: bool) -> tuple[int, int]:
        """(stage-1 rows, stage-2 rows) for k candidates among `rows`; with `whole` (stage 1
        sees every bit) stage 1 keeps what stage 2 would."""
        stage2 = min(rows, max(self.shortlist_factor * k, self.min_shortlist))
        stage1 = stage2 if whole else max(self.coarse_factor * k, self.min_coarse)
        return stage1, stage2


STAGES = Stages()


def quantize(vectors: np.ndarray) -> np.ndarray:
    """Sign bits, little-endian within each byte: the byte format of sqlite-vec's
    `vec_quantize_binary`, so stored codes also work with `vec_distance_hamming`."""
    arr = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
    return np.packbits(arr > 0, axis=1, bitorder="little")


def as_words(codes: np.ndarray) -> np.ndarray:
    """Pad byte codes to a multiple of 8 bytes and view them as uint64 words."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    pad = (-codes.shape[1]) % 8
    if pad:
        codes = np.pad(codes, ((0, 0), (0, pad)))
    return codes.view(np.uint64)


def words_per_row(dim: int) -> int:
    """uint64 words in the code of a `dim`-dimensional vector."""
    return -(-dim // 64)


def asymmetric_scores(query: np.ndarray, words: np.ndarray) -> np.ndarray:
    """q . b for each row's bit vector b (bits as 0/1): ranks like q . sign(x), since
    q . (2b - 1) = 2 q . b - sum(q). One 256-entry table per code byte, then a gather."""
    q = np.asarray(query, dtype=np.float32).reshape(-1)
    nbytes = words.shape[1] * 8
    q = np.pad(q, (0, nbytes * 8 - len(q)))
    tables = (q.reshape(nbytes, 8) @ _BYTE_BITS.T).ravel()  # [nbytes * 256]
    offsets = np.arange(nbytes, dtype=np.intp) * 256
    result: np.ndarray = tables[words.view(np.uint8).astype(np.intp) + offsets].sum(axis=1)
    return result


def hamming(words: np.ndarray, qwords: np.ndarray) -> np.ndarray:
    """Hamming distance of each row of `words` [n, W] to `qwords` [W]."""
    result: np.ndarray = np.bitwise_count(words ^ qwords).sum(axis=1, dtype=np.uint16)
    return result


def coarse_distances(columns: np.ndarray, qwords: np.ndarray) -> np.ndarray:
    """Hamming distance over the words held column by column (`columns` [C, n]), block by
    block so every temporary stays in cache."""
    n_words, n = columns.shape
    out = np.empty(n, dtype=np.uint16)
    size = min(n, SCAN_BLOCK_ROWS)
    xor = np.empty(size, dtype=np.uint64)
    bits = np.empty(size, dtype=np.uint8)
    for start in range(0, n, SCAN_BLOCK_ROWS):
        stop = min(start + SCAN_BLOCK_ROWS, n)
        m = stop - start
        acc = out[start:stop]
        for j in range(n_words):
            np.bitwise_xor(columns[j, start:stop], qwords[j], out=xor[:m])
            np.bitwise_count(xor[:m], out=bits[:m])
            if j == 0:
                acc[:] = bits[:m]
            else:
                np.add(acc, bits[:m], out=acc)
    return out


def nearest(dist: np.ndarray, size: int) -> np.ndarray:
    """Positions of the `size` smallest values of `dist` (small non-negative integers), ties
    going to the earlier position. A histogram finds the cut: over a million rows that is
    several times cheaper than argpartition."""
    if size >= len(dist):
        return np.arange(len(dist))
    cumulative = np.cumsum(np.bincount(dist))
    cut = int(np.searchsorted(cumulative, size))  # first distance reaching `size` rows
    below = np.flatnonzero(dist < cut)
    ties = np.flatnonzero(dist == cut)[: size - len(below)]
    return np.concatenate([below, ties])


def grown(rows: int) -> int:
    """Capacity for `rows` rows and a quarter more, so appends rarely copy the matrix."""
    return rows + rows // 4 + 1024


class ColumnBuffers:
    """Append-only row storage shared by the successive snapshots of one collection.

    Snapshots read rows [0, n) of whatever arrays they were given; appends write only beyond
    the largest n handed out, or into new arrays when the capacity is exhausted, so a search
    running on an older snapshot never sees a row change under it.
    """

    def __init__(self, n_words: int, capacity: int) -> None:
        self.n_words = n_words
        self.ids = np.empty(capacity, dtype=np.int64)
        self.docs = np.empty(capacity, dtype=np.int64)
        self.words = np.empty((capacity, n_words), dtype=np.uint64)
        self.coarse = np.empty((min(n_words, COARSE_WORDS), capacity), dtype=np.uint64)
        self.size = 0
        self._lock = threading.Lock()

    @property
    def capacity(self) -> int:
        return len(self.ids)

    def append(
        self, at: int, ids: np.ndarray, docs: np.ndarray, words: np.ndarray
    ) -> ColumnBuffers:
        """Buffers holding rows [0, at) of these and then the new rows: these buffers when
        `at` is their end and there is room, else a copy with room to spare."""
        n = len(ids)
        with self._lock:
            target = self
            if at != self.size or at + n > self.capacity:
                target = ColumnBuffers(self.n_words, grown(at + n))
                target._copy_from(self, at)
            target._write(at, ids, docs, words)
            return target

    def _copy_from(self, other: ColumnBuffers, n: int) -> None:
        self.ids[:n] = other.ids[:n]
        self.docs[:n] = other.docs[:n]
        self.words[:n] = other.words[:n]
        self.coarse[:, :n] = other.coarse[:, :n]
        self.size = n

    def _write(self, at: int, ids: np.ndarray, docs: np.ndarray, words: np.ndarray) -> None:
        stop = at + len(ids)
        self.ids[at:stop] = ids
        self.docs[at:stop] = docs
        self.words[at:stop] = words
        self.coarse[:, at:stop] = words[:, : self.coarse.shape[0]].T
        self.size = stop


@dataclass(frozen=True)
class BinaryIndex:
    """An immutable snapshot of one collection's codes: searches keep using theirs while a
    refresh builds the next one."""

    collection_id: int
    generation: int
    epoch: int
    buffers: ColumnBuffers
    n: int  # rows [0, n) of the buffers, chunk ids ascending
    alive: np.ndarray  # bool [n]

    @classmethod
    def empty(cls, collection_id: int, generation: int, epoch: int, dim: int) -> BinaryIndex:
        """A snapshot without rows, for codes of `dim`-dimensional vectors."""
        buffers = ColumnBuffers(words_per_row(dim), grown(0))
        return cls(collection_id, generation, epoch, buffers, 0, np.ones(0, dtype=bool))

    @property
    def ids(self) -> np.ndarray:
        return self.buffers.ids[: self.n]

    @property
    def docs(self) -> np.ndarray:
        return self.buffers.docs[: self.n]

    @property
    def words(self) -> np.ndarray:
        return self.buffers.words[: self.n]

    @property
    def coarse(self) -> np.ndarray:
        return self.buffers.coarse[:, : self.n]

    @property
    def size(self) -> int:
        """Live rows."""
        return int(np.count_nonzero(self.alive))

    def candidates(
        self,
        query: np.ndarray,
        k: int,
        allowed_docs: np.ndarray | None = None,
        stages: Stages = STAGES,
    ) -> np.ndarray:
        """Chunk ids of (up to) k rows likely nearest to `query`, by the three stages of the
        module docstring. `allowed_docs` (document row ids) restricts the scan itself, not
        its output: when at least k rows are allowed, k ids come back."""
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        qwords = as_words(quantize(q))[0]
        mask = self._mask(allowed_docs)
        n_allowed = self.n if mask is None else int(np.count_nonzero(mask))
        if n_allowed == 0:
            return np.empty(0, dtype=np.int64)
        if n_allowed <= k:
            return self.ids.copy() if mask is None else self.ids[mask]
        n_coarse = self.coarse.shape[0]
        stage1, stage2 = stages.sizes(k, n_allowed, whole=n_coarse == self.buffers.n_words)
        if n_allowed > stage1:
            rows = self._coarse_shortlist(qwords[:n_coarse], mask, n_allowed, stage1)
        else:
            rows = np.arange(self.n) if mask is None else np.flatnonzero(mask)
        if len(rows) > stage2:
            rows = rows[nearest(hamming(self.words[rows], qwords), stage2)]
        scores = asymmetric_scores(q, self.words[rows])
        best = np.argpartition(-scores, k - 1)[:k]
        result: np.ndarray = self.ids[rows[best]]
        return result

    def _mask(self, allowed_docs: np.ndarray | None) -> np.ndarray | None:
        """Rows a search may return: alive and, with a filter, of an allowed document."""
        mask = None if self.alive.all() else self.alive
        if allowed_docs is None:
            return mask
        if len(allowed_docs) == 0 or self.n == 0:
            return np.zeros(self.n, dtype=bool)
        top = int(max(self.docs.max(), allowed_docs.max())) + 1
        lut = np.zeros(top, dtype=bool)
        lut[allowed_docs] = True
        allowed = lut[self.docs]
        return allowed if mask is None else allowed & mask

    def _coarse_shortlist(
        self, qcoarse: np.ndarray, mask: np.ndarray | None, n_allowed: int, size: int
    ) -> np.ndarray:
        """Rows of the `size` allowed rows nearest by stage-1 distance."""
        if mask is not None and n_allowed * 4 < self.n:
            # A selective filter: gather the allowed rows' columns and scan only those.
            rows = np.flatnonzero(mask)
            dist = coarse_distances(self.coarse[:, rows], qcoarse)
            result: np.ndarray = rows[nearest(dist, size)]
            return result
        dist = coarse_distances(self.coarse, qcoarse)
        if mask is not None:
            dist[~mask] = _MASKED  # never among the nearest: size <= n_allowed
        return nearest(dist, size)

    def with_deleted(self, dead: np.ndarray) -> BinaryIndex:
        """This snapshot with the rows of `dead` chunk ids (ascending) masked out."""
        if not len(dead) or not self.n:
            return self
        # A chunk added and deleted since the last refresh is in neither: match exactly.
        pos = np.clip(np.searchsorted(self.ids, dead), 0, self.n - 1)
        hit = pos[self.ids[pos] == dead]
        if not len(hit):
            return self
        alive = self.alive.copy()
        alive[hit] = False
        return replace(self, alive=alive)

    def with_rows(self, ids: np.ndarray, docs: np.ndarray, codes: np.ndarray) -> BinaryIndex:
        """This snapshot with new rows appended (ids ascending, larger than its own; codes as
        bytes)."""
        if not len(ids):
            return self
        buffers = self.buffers.append(self.n, ids, docs, as_words(codes))
        alive = np.concatenate([self.alive, np.ones(len(ids), dtype=bool)])
        return replace(self, buffers=buffers, n=self.n + len(ids), alive=alive)

    def at_generation(self, generation: int) -> BinaryIndex:
        """This snapshot as of `generation`, repacked when a quarter of its rows are dead."""
        new = replace(self, generation=generation)
        dead_rows = new.n - new.size
        if dead_rows and dead_rows >= REPACK_DEAD_FRACTION * new.n:
            return new.repacked()
        return new

    def repacked(self) -> BinaryIndex:
        """The same snapshot without its dead rows, in fresh buffers."""
        keep = self.alive
        n = int(np.count_nonzero(keep))
        buffers = ColumnBuffers(self.buffers.n_words, grown(n))
        if n:
            buffers = buffers.append(0, self.ids[keep], self.docs[keep], self.words[keep])
        return replace(self, buffers=buffers, n=n, alive=np.ones(n, dtype=bool))
