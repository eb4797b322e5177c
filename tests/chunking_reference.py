"""The chunker as it was written first, a Python step per token: the oracle that the
vectorised one in localrank/collections/chunking.py must agree with exactly
(tests/test_chunking.py). Kept unchanged but for the `markdown` switch; not used by localrank."""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence

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


def _priorities(text: str, spans: Sequence[tuple[int, int]], markdown: bool = True) -> list[int]:
    """prio[i]: how good it is to cut before token i (prio[0] is unused)."""
    starts = _line_starts(text)
    kinds = _line_kinds(text, starts, markdown)
    in_code_line = [k == "code" for k in kinds]
    # A fence line belongs to the code block: the opening fence closes it off from above,
    # the closing fence from below.
    opening = [False] * len(kinds)
    inside = False
    for i, k in enumerate(kinds):
        if k == "fence":
            opening[i] = not inside
            inside = not inside
    prio = [TOKEN] * len(spans)
    for i in range(1, len(spans)):
        pos = spans[i][0]
        gap_start = spans[i - 1][1]
        line = bisect.bisect_right(starts, pos) - 1
        # The cut starts a new line if a line break lies between the two tokens.
        new_line = starts[line] > gap_start or (
            starts[line] == pos and pos > 0 and text[pos - 1] == "\n"
        )
        if not new_line:
            gap = text[gap_start:pos]
            spaced = bool(gap) and gap.isspace() or text[pos].isspace()
            inside_code = in_code_line[line] or kinds[line] == "fence"
            if (
                spaced
                and not inside_code
                and _SENTENCE_END.search(text[max(0, gap_start - 4) : gap_start])
            ):
                prio[i] = SENTENCE
            continue
        kind, prev_kind = kinds[line], kinds[line - 1] if line > 0 else "blank"
        if kind == "heading":
            prio[i] = FORCED
        elif (kind == "fence" and opening[line]) or (
            prev_kind == "fence" and not opening[line - 1]
        ):
            prio[i] = FENCE
        elif kind in ("code", "fence"):
            prio[i] = CODE_LINE
        elif prev_kind == "blank":
            prio[i] = PARAGRAPH
        else:
            prio[i] = LINE
    return prio


def _choose_end(prio: list[int], start: int, target: int, n: int) -> int:
    hi = min(start + target, n)
    for i in range(start + 1, hi + 1):
        if i < n and prio[i] == FORCED:
            return i
    if hi == n:
        return n
    best, best_prio = hi, 0
    half = start + max(1, target // 2)
    for i in range(start + 1, hi + 1):
        p = prio[i]
        # Early cuts only for structure: a code block that does not fit starts a new chunk.
        if i < half and p < FENCE:
            continue
        if p >= best_prio:
            best, best_prio = i, p
    return best


def _choose_next_start(prio: list[int], start: int, end: int, overlap: int) -> int:
    if overlap <= 0 or end >= len(prio) or prio[end] >= FENCE:
        return end
    lo = max(start + 1, end - overlap)
    # Never reach back across a heading or a code-block boundary.
    for i in range(end - 1, lo - 1, -1):
        if prio[i] >= FENCE:
            lo = i
            break
    for i in range(lo, end):
        if prio[i] >= SENTENCE:
            return i
    return lo


def chunk_text(
    text: str,
    spans: Sequence[tuple[int, int]],
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
    tokens = [(int(a), int(b)) for a, b in spans if b > a]
    tokens.sort()
    n = len(tokens)
    if n == 0:
        return []
    prio = _priorities(text, tokens, markdown)
    starts = _line_starts(text)
    pages = [m.start() for m in re.finditer("\f", text)]
    chunks: list[Chunk] = []
    start = 0
    while start < n:
        end = _choose_end(prio, start, target_tokens, n)
        char_start = tokens[start][0]
        char_end = tokens[end - 1][1]
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
