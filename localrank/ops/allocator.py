"""The C allocator, seen from a long-running daemon: hand freed memory back to the system.

glibc's malloc keeps freed memory in its arenas for reuse; after a burst of requests a daemon
that then idles for hours would keep that peak (measured: +20-40 MB of free-but-kept heap after
2,500 simultaneous requests, bench/soak). `trim()` returns it (malloc_trim(0), which also
releases free pages in the middle of the heap); the model worker calls it once the model has
been idle for a moment after work. A no-op where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
from collections.abc import Callable

log = logging.getLogger(__name__)


def _load_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # musl and others have no malloc_trim
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


_TRIM = _load_trim()


def can_trim() -> bool:
    return _TRIM is not None


def trim() -> bool:
    """Return the allocator's free memory to the system; True if some was released."""
    if _TRIM is None:
        return False
    return bool(_TRIM(0))
