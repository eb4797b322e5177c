"""Token-aware chunking with overlap that respects markdown structure.

The text is cut between tokens (the embedder's own `token_offsets`), so a chunk's size is
measured in the model's tokens. Where to cut is decided by a priority per token boundary:

    heading start (forced) > around a fenced code block > paragraph > line > sentence
    > line inside a code block > any token

A chunk ends at the first heading in its window; otherwise at the best boundary (latest among
the highest priority) in the second half of its window, or before a fenced code block that does
not fit. So a code block is only split when it alone is larger than the target. Chunks that end
at a heading or code-block boundary do not overlap the next one; the others overlap by up to
`overlap` tokens, starting at a sentence or line boundary where there is one. Deterministic:
the same text and offsets always give the same chunks.

A form feed (`\\f`, how PDF text extraction marks pages) advances the page number.

Source code is not Markdown: with `markdown=False` (documents whose metadata says
`format: code`) a `# comment` is not a heading and ``` is not a fence; cuts fall between
paragraphs (blank lines, which separate functions and classes in most code), then lines.

Token-level work is done on arrays (numpy), one operation per kind of boundary rather than a
Python step per token: a 9 MB document has 1.4M tokens, and the per-token loops took 7 s
holding the GIL (stalling the daemon's model thread between its kernels) and ~300 MB of tuples.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence

import numpy as np

from localrank.store.records import Chunk

FORCED = 100
FENCE = 50
PARAGRAPH = 40
LINE = 30
SENTENCE = 20
CODE_LINE = 10
TOKEN = 1

_HEADING = re.compile(r"^ {0,3}#{1,6}(\s|$)")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*$")


def _line_starts(text: str) -> list[int]:
    starts = [0]
    starts.extend(m.end() for m in re.finditer("\n", text))
    return starts


def _line_kinds(text: str, starts: list[int], markdown: bool = True) -> list[str]:
    """Each line's role: heading, fence, code, blank or text (blank or text only when the text
    is not Markdown)."""
    kinds: list[str] = []
    in_code = False
    fence = ""
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else len(text)
        line = text[start:end].rstrip("\n")
        if not markdown:
            kinds.append("text" if line.strip() else "blank")
            continue
        m = _FENCE.match(line)
        if in_code:
            if m and m.group(1) == fence and not line.strip()[3:].strip("`~").strip():
                in_code = False
            kinds.append("fence" if not in_code else "code")
        elif m:
            in_code, fence = True, m.group(1)
            kinds.append("fence")
        elif _HEADING.match(line):
            kinds.append("heading")
        elif not line.strip():
            kinds.append("blank")
        else:
            kinds.append("text")
    return kinds


_CLOSERS = np.array([ord(c) for c in "\"')]"], dtype="<u4")
_ENDERS = np.array([ord(c) for c in ".!?"], dtype="<u4")
_SPACE = np.array([c for c in range(0x3001) if chr(c).isspace()], dtype="<u4")  # str.isspace


def _priorities(
    text: str, starts: np.ndarray, ends: np.ndarray, markdown: bool = True
) -> np.ndarray:
    """prio[i]: how good it is to cut before token i (prio[0] is unused)."""
    line_starts = _line_starts(text)
    kinds = _line_kinds(text, line_starts, markdown)
    # A fence line belongs to the code block: the opening fence closes it off from above,
    # the closing fence from below.
    opening = [False] * len(kinds)
    inside = False
    for i, k in enumerate(kinds):
        if k == "fence":
            opening[i] = not inside
            inside = not inside
    kind = np.array(kinds)
    heading, fence, code = kind == "heading", kind == "fence", kind == "code"
    opens = np.array(opening, dtype=bool)
    # The line before each line (before the first: a blank one).
    prev_fence = np.concatenate([[False], fence[:-1]])
    prev_opens = np.concatenate([[False], opens[:-1]])
    prev_blank = np.concatenate([[True], kind[:-1] == "blank"])
    line_prio = np.select(
        [
            heading,
            (fence & opens) | (prev_fence & ~prev_opens),
            code | fence,
            prev_blank,
        ],
        [FORCED, FENCE, CODE_LINE, PARAGRAPH],
        LINE,
    )
    n = len(starts)
    prio = np.full(n, TOKEN, dtype=np.int64)
    if n < 2:
        return prio
    pos, gap_start = starts[1:], ends[:-1]
    ls = np.asarray(line_starts, dtype=np.int64)
    line = np.searchsorted(ls, pos, side="right") - 1
    # The cut starts a new line if a line break lies between the two tokens.
    new_line = (ls[line] > gap_start) | ((ls[line] == pos) & (pos > 0))
    prio[1:] = np.where(new_line, line_prio[line], TOKEN)
    # A sentence ends before the cut: the gap is whitespace (or the next token starts with some),
    # not in code, and the 4 characters before it end with [.!?] and closing quotes/brackets.
    chars = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
    width = pos - gap_start
    spaced = np.isin(chars[np.minimum(pos, len(chars) - 1)], _SPACE)
    one = width == 1
    spaced[one] |= np.isin(chars[gap_start[one]], _SPACE)
    for j in np.flatnonzero(width > 1).tolist():  # rare: a longer gap between two tokens
        spaced[j] = spaced[j] or text[gap_start[j] : pos[j]].isspace()
    ends_sentence = np.zeros(n - 1, dtype=bool)
    closing = np.ones(n - 1, dtype=bool)  # the characters after the candidate all close
    for back in range(1, 5):
        at = gap_start - back
        ok = at >= 0
        c = chars[np.maximum(at, 0)]
        ends_sentence |= ok & closing & np.isin(c, _ENDERS)
        closing &= ok & np.isin(c, _CLOSERS)
    sentence = ~new_line & spaced & ends_sentence & ~code[line] & ~fence[line]
    prio[1:][sentence] = SENTENCE
    return prio


def _choose_end(prio: np.ndarray, start: int, target: int, n: int) -> int:
    hi = min(start + target, n)
    forced = np.flatnonzero(prio[start + 1 : min(hi + 1, n)] == FORCED)
    if forced.size:
        return start + 1 + int(forced[0])
    if hi == n:
        return n
    window = prio[start + 1 : hi + 1]
    half = start + max(1, target // 2)
    # Early cuts only for structure: a code block that does not fit starts a new chunk.
    eligible = (np.arange(start + 1, hi + 1) >= half) | (window >= FENCE)
    if not eligible.any():
        return hi
    best = np.where(eligible, window, -1)
    # The latest among the best boundaries.
    return start + 1 + int(len(best) - 1 - np.argmax(best[::-1]))


def _choose_next_start(prio: np.ndarray, start: int, end: int, overlap: int) -> int:
    if overlap <= 0 or end >= len(prio) or prio[end] >= FENCE:
        return end
    lo = max(start + 1, end - overlap)
    # Never reach back across a heading or a code-block boundary.
    walls = np.flatnonzero(prio[lo:end] >= FENCE)
    if walls.size:
        lo += int(walls[-1])
    sentence = np.flatnonzero(prio[lo:end] >= SENTENCE)
    return lo + int(sentence[0]) if sentence.size else lo


def chunk_text(
    text: str,
    spans: Sequence[tuple[int, int]] | np.ndarray,
    *,
    target_tokens: int = 512,
    overlap_tokens: int = 64,
    markdown: bool = True,
) -> list[Chunk]:
    """Split `text` into chunks of at most `target_tokens` tokens (the `spans` of its tokens);
    `markdown=False` for source code (no headings or fences)."""
    if target_tokens <= 0:
        raise ValueError("target_tokens must be positive")
    overlap_tokens = max(0, min(overlap_tokens, target_tokens // 2))
    tokens = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    tokens = tokens[tokens[:, 1] > tokens[:, 0]]
    tokens = tokens[np.lexsort((tokens[:, 1], tokens[:, 0]))]
    n = len(tokens)
    if n == 0:
        return []
    starts_arr, ends_arr = tokens[:, 0], tokens[:, 1]
    prio = _priorities(text, starts_arr, ends_arr, markdown)
    starts = _line_starts(text)
    pages = [m.start() for m in re.finditer("\f", text)]
    chunks: list[Chunk] = []
    start = 0
    while start < n:
        end = _choose_end(prio, start, target_tokens, n)
        char_start = int(starts_arr[start])
        char_end = int(ends_arr[end - 1])
        piece = text[char_start:char_end]
        lead = len(piece) - len(piece.lstrip())
        trail = len(piece) - len(piece.rstrip())
        char_start, char_end = char_start + lead, char_end - trail
        if char_end > char_start:
            chunks.append(
                Chunk(
                    ordinal=len(chunks),
                    text=text[char_start:char_end],
                    char_start=char_start,
                    char_end=char_end,
                    line_start=bisect.bisect_right(starts, char_start),
                    line_end=bisect.bisect_right(starts, char_end - 1),
                    page=bisect.bisect_right(pages, char_start) + 1 if pages else None,
                )
            )
        if end >= n:
            break
        start = _choose_next_start(prio, start, end, overlap_tokens)
    return chunks
